//! Dockerfile parsing: turns the text of a Dockerfile into typed
//! instructions with their source lines, and expands variables in them the
//! way Docker does, so the builder can key and run each step.
//!
//! # The supported subset
//!
//! - Stages: optional `ARG`s, then one or more stages, each a `FROM`
//!   (`scratch`, `oci:DIR[:TAG]`, `NAME[:TAG]` of an image kept in the
//!   store, or an earlier stage's name; `AS name`, unique) and its steps.
//!   `COPY --from=STAGE|INDEX` copies from an earlier stage.
//! - Instructions `FROM`, `RUN`, `COPY`, `ADD`, `ENV`, `ARG`, `WORKDIR`,
//!   `USER`, `LABEL`, `CMD`, `ENTRYPOINT`, `EXPOSE`, in any case. Anything
//!   else (`VOLUME`, `SHELL`, `HEALTHCHECK`, ...) is an error.
//! - Comments, blank lines, line continuations (comment and blank lines
//!   inside them skipped), the `# escape=` directive (`\` or `` ` ``);
//!   `# syntax=` and `# check=` are accepted and ignored.
//! - Exec form (a JSON array of strings) and shell form for `RUN`, `CMD`,
//!   `ENTRYPOINT`; JSON-array form for `COPY` and `ADD` too.
//! - Flags: `RUN --network=none|host|default` (`default` means `none`:
//!   steps have no network unless they ask); `COPY`/`ADD`
//!   `--chown=user[:group]` and `--chmod=OCTAL`; `COPY --from=...`;
//!   `ADD --checksum=sha256:HEX`,
//!   required when a source is an `http(s)://` URL.
//! - Variables: `$NAME`, `${NAME}`, `${NAME:-word}`, `${NAME-word}`,
//!   `${NAME:+word}`, `${NAME+word}`, escaped `\$`, single and double quotes
//!   — expanded in `FROM`, `COPY`, `ADD`, `ENV`, `ARG`, `WORKDIR`, `USER`,
//!   `LABEL`, `EXPOSE` and `--chown`; never in `RUN`, `CMD`, `ENTRYPOINT`
//!   (the shell expands those) nor in `--chmod`, `--checksum`, `--network`.
//!
//! Not supported, each a clear error: `FROM --platform`, heredocs (`RUN <<EOF`), other flags
//! (`--mount`, `--link`, ...), `EXPOSE` port ranges, substitutions other
//! than the ones listed.
//!
//! # Using it
//!
//! [`parse`] checks the file's shape and returns a [`Dockerfile`] whose words
//! are *as written*: variables unexpanded, quotes in place. Values depend on
//! the build args and on `ENV`s earlier in the file, so the builder expands
//! each step when it reaches it:
//!
//! 1. `let globals = dockerfile.global_scope(&build_args)?` — the `ARG`s
//!    before `FROM`, with `--build-arg` values overriding their defaults;
//! 2. `let base = dockerfile.base_image(stage_index, &globals)?`;
//! 3. for each step, `let instruction = dockerfile.expand_step(step,
//!    &scope)?`, then update `scope` from it: an `ENV` sets its pairs; an
//!    `ARG` sets its name to the build arg, else its default, else the global
//!    value of that name, else leaves it unset; an `ENV` of a name wins over
//!    an `ARG` of it (Docker's rules; the builder keeps the scope).
//!
//! Instructions whose text has no `$` are also validated at parse time,
//! since no scope can change them: most mistakes surface before a build
//! starts, and errors in the others surface when their step is expanded,
//! with the same `FILE:LINE: message` form.
//!
//! This module does no I/O and never panics on any input.

mod expand;
mod instruction;
mod json;
mod lexer;
mod parser;
mod reference;
mod words;

#[cfg(test)]
mod tests;

use thiserror::Error;

pub use expand::{EmptyScope, ExpandError, Scope, expand};
pub use instruction::{
    AddSource, Arg, Checksum, Command, Healthcheck, InlineFile, Instruction, KeyValue, Network,
};
pub use reference::{DEFAULT_REGISTRY, DEFAULT_TAG, ImageRef, LayoutRef, ReferenceError};

use parser::{Keyword, Parsed};

/// A Dockerfile error: the file, the line where the instruction starts
/// (1-based), and what was expected and found.
#[derive(Debug, Clone, PartialEq, Eq, Error)]
#[error("{file}:{line}: {message}")]
pub struct ParseError {
    pub file: String,
    pub line: usize,
    pub message: String,
}

/// A parsed Dockerfile: its stages, each a base image and the steps on top
/// of it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Dockerfile {
    /// The name errors are reported under.
    pub file_name: String,
    /// The escape character: `\`, or a backtick after an `escape` directive.
    pub escape: char,
    /// `ARG`s before the first `FROM`, in file order; usable in every `FROM`.
    pub global_args: Vec<GlobalArg>,
    /// The stages in file order; never empty. The last is the default target.
    pub stages: Vec<Stage>,
    /// Parser directives accepted and ignored (`# syntax=` picks a BuildKit
    /// frontend, `# check=` its lint rules; neither applies here), as
    /// `name=value`, for the builder to mention.
    pub ignored_directives: Vec<String>,
}

/// One stage: a `FROM` line and the instructions up to the next.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Stage {
    pub from: FromInstruction,
    pub steps: Vec<Step>,
}

/// What a `FROM` or `COPY --from` names once expanded, when it is not an
/// image: an earlier stage, by its index.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct StageRef(pub usize);

/// One `ARG` declared before `FROM` (an `ARG A B` line gives two).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct GlobalArg {
    pub line: usize,
    pub arg: Arg,
}

/// The `FROM` line, its image reference as written.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct FromInstruction {
    pub line: usize,
    /// The instruction text, continuations joined.
    pub source_text: String,
    /// The image reference, unexpanded; see [`Dockerfile::base_image`].
    pub image: String,
    /// The `AS name`, lower-cased.
    pub stage_name: Option<String>,
    /// `--platform=...`, unexpanded; see [`Dockerfile::base_platform`].
    pub platform: Option<String>,
}

/// What a `FROM` resolves to once expanded.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum BaseImage {
    /// `FROM scratch`: no parent layers.
    Scratch,
    /// `FROM oci:DIR[:TAG]`: an OCI image layout directory.
    OciLayout(LayoutRef),
    /// `FROM [HOST[:PORT]/]NAME[:TAG][@DIGEST]`: an image kept in the store
    /// under that name, or on a registry.
    Named(ImageRef),
    /// `FROM name` of an earlier stage.
    Stage(StageRef),
}

/// One instruction after `FROM`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Step {
    /// 1-based line where the instruction starts.
    pub line: usize,
    /// The instruction text with continuations joined and comment lines
    /// inside them dropped, trimmed: what history shows and keys may hash.
    pub source_text: String,
    /// The instruction, words as written.
    pub instruction: Instruction,
}

/// Parses a Dockerfile. `file_name` is only used in error messages.
pub fn parse(file_name: &str, text: &str) -> Result<Dockerfile, ParseError> {
    let lexed = lexer::lex(text).map_err(|e| error_at(file_name, e.line, e.message))?;
    let mut assembler = Assembler {
        file_name,
        escape: lexed.escape,
        global_args: Vec::new(),
        stages: Vec::new(),
        ignored_directives: lexed.ignored_directives.clone(),
    };
    for line in &lexed.lines {
        assembler
            .add(line.line, line.text.trim())
            .map_err(|message| error_at(file_name, line.line, message))?;
    }
    assembler.finish(lexed.line_count)
}

impl Dockerfile {
    /// The variables the `FROM` line sees: each global `ARG` set to its
    /// build-arg value if `build_args` has one, else its default (expanded
    /// with the global args before it), else left unset. Later
    /// declarations of a name shadow earlier ones.
    pub fn global_scope(
        &self,
        build_args: &dyn Scope,
    ) -> Result<Vec<(String, String)>, ParseError> {
        let mut scope: Vec<(String, String)> = Vec::new();
        for global in &self.global_args {
            let arg = instruction::expand_arg(&global.arg, self.escape, &scope)
                .map_err(|message| self.error(global.line, message))?;
            let value = build_args
                .lookup(&arg.name)
                .map(str::to_owned)
                .or(arg.default);
            if let Some(value) = value {
                scope.push((arg.name, value));
            }
        }
        Ok(scope)
    }

    /// Expands stage `index`'s `FROM` image in `scope` (normally
    /// [`global_scope`](Self::global_scope)) and says what it names: an
    /// earlier stage (by name, as Docker resolves it first), or an image.
    pub fn base_image(&self, index: usize, scope: &dyn Scope) -> Result<BaseImage, ParseError> {
        let from = &self.stages[index].from;
        let reference = expand(&from.image, self.escape, scope).map_err(|e| {
            self.error(
                from.line,
                format!("FROM: cannot expand `{}`: {e}", from.image),
            )
        })?;
        if let Some(stage) = self.stage_named(&reference, index) {
            return Ok(BaseImage::Stage(stage));
        }
        parse_base_image(&reference).map_err(|message| self.error(from.line, message))
    }

    /// Stage `index`'s `FROM --platform`, expanded in `scope` (where the
    /// platform ARGs, `$BUILDPLATFORM` and kin, are defined).
    pub fn base_platform(
        &self,
        index: usize,
        scope: &dyn Scope,
    ) -> Result<Option<String>, ParseError> {
        let from = &self.stages[index].from;
        from.platform
            .as_deref()
            .map(|p| {
                expand(p, self.escape, scope).map_err(|e| {
                    self.error(
                        from.line,
                        format!("FROM: cannot expand --platform={p}: {e}"),
                    )
                })
            })
            .transpose()
    }

    /// The stage a `COPY --from` in stage `index` names: an earlier stage's
    /// name or its number (`--from=0`), else `None` (an image).
    pub fn copy_source_stage(&self, reference: &str, index: usize) -> Option<StageRef> {
        if let Ok(n) = reference.parse::<usize>() {
            return (n < index).then_some(StageRef(n));
        }
        self.stage_named(reference, index)
    }

    /// What a `COPY --from` in stage `index` names: an earlier stage (see
    /// [`copy_source_stage`](Self::copy_source_stage)), else an image, as
    /// BuildKit reads it (`COPY --from=busybox:1.36 /bin/busybox /bin/`).
    pub fn copy_source(&self, reference: &str, index: usize) -> Result<BaseImage, String> {
        if let Some(stage) = self.copy_source_stage(reference, index) {
            return Ok(BaseImage::Stage(stage));
        }
        if reference.parse::<usize>().is_ok() {
            return Err(format!(
                "COPY --from={reference}: no earlier stage has that number"
            ));
        }
        match parse_image(reference) {
            Ok(BaseImage::Named(image)) => Ok(BaseImage::Named(image)),
            Ok(_) => Err(format!(
                "COPY --from={reference}: copying from scratch or an OCI layout is not supported; \
                 name an earlier stage or an image"
            )),
            Err(e) => Err(format!(
                "COPY --from={reference}: no earlier stage has that name, and it is not an image \
                 name: {e}"
            )),
        }
    }

    /// The index of the stage named `name` (case-insensitively, as Docker
    /// matches), among those before stage `before`.
    pub fn stage_named(&self, name: &str, before: usize) -> Option<StageRef> {
        let name = name.to_ascii_lowercase();
        self.stages[..before]
            .iter()
            .position(|s| s.from.stage_name.as_deref() == Some(name.as_str()))
            .map(StageRef)
    }

    /// The stage `--target` names (by name, or by number), or the last.
    pub fn target_stage(&self, target: Option<&str>) -> Result<usize, String> {
        let Some(target) = target else {
            return Ok(self.stages.len() - 1);
        };
        let named = self
            .stage_named(target, self.stages.len())
            .map(|s| s.0)
            .or_else(|| {
                target
                    .parse::<usize>()
                    .ok()
                    .filter(|&n| n < self.stages.len())
            });
        named.ok_or_else(|| {
            let names: Vec<String> = self
                .stages
                .iter()
                .enumerate()
                .map(|(i, s)| s.from.stage_name.clone().unwrap_or_else(|| i.to_string()))
                .collect();
            format!(
                "--target {target}: {} has no such stage (stages: {})",
                self.file_name,
                names.join(", ")
            )
        })
    }

    /// `step`'s instruction with its words expanded in `scope` (the build
    /// args and environment in force at that step) and its final values
    /// validated.
    pub fn expand_step(&self, step: &Step, scope: &dyn Scope) -> Result<Instruction, ParseError> {
        step.instruction
            .expanded(self.escape, scope)
            .map_err(|message| self.error(step.line, message))
    }

    fn error(&self, line: usize, message: String) -> ParseError {
        error_at(&self.file_name, line, message)
    }
}

fn error_at(file: &str, line: usize, message: String) -> ParseError {
    ParseError {
        file: file.to_owned(),
        line,
        message,
    }
}

/// Collects lines into a [`Dockerfile`], enforcing the order: ARGs, then
/// stages, each a FROM and its steps.
struct Assembler<'a> {
    file_name: &'a str,
    escape: char,
    global_args: Vec<GlobalArg>,
    stages: Vec<Stage>,
    ignored_directives: Vec<String>,
}

impl Assembler<'_> {
    fn add(&mut self, line: usize, text: &str) -> Result<(), String> {
        let (keyword, args) = parser::split_line(text)?;
        self.check_order(keyword)?;
        match parser::parse_instruction(keyword, args, self.escape)? {
            Parsed::From {
                image,
                stage_name,
                platform,
            } => {
                let names_a_stage = self.stages.iter().any(|s| {
                    s.from.stage_name.as_deref() == Some(image.to_ascii_lowercase().as_str())
                });
                if !image.contains('$') && !names_a_stage {
                    parse_base_image(&expand_literal(&image, self.escape)?)?;
                }
                if let Some(name) = &stage_name
                    && let Some(first) = self
                        .stages
                        .iter()
                        .find(|s| s.from.stage_name.as_ref() == Some(name))
                {
                    return Err(format!(
                        "FROM: the stage name `{name}` is already used on line {}",
                        first.from.line
                    ));
                }
                self.stages.push(Stage {
                    from: FromInstruction {
                        line,
                        source_text: text.to_owned(),
                        image,
                        stage_name,
                        platform,
                    },
                    steps: Vec::new(),
                });
            }
            Parsed::Instruction(instruction) => {
                if !args.contains('$') {
                    instruction.expanded(self.escape, &EmptyScope)?;
                }
                self.push(line, text, instruction);
            }
        }
        Ok(())
    }

    /// Only ARG may come before the first FROM.
    fn check_order(&self, keyword: Keyword) -> Result<(), String> {
        match (self.stages.is_empty(), keyword) {
            (true, Keyword::From | Keyword::Arg) | (false, _) => Ok(()),
            (true, other) => Err(format!(
                "expected FROM before {other}: a Dockerfile must start with FROM (only ARG may come before it)"
            )),
        }
    }

    fn push(&mut self, line: usize, text: &str, instruction: Instruction) {
        match (self.stages.last_mut(), instruction) {
            (None, Instruction::Arg(args)) => self
                .global_args
                .extend(args.into_iter().map(|arg| GlobalArg { line, arg })),
            (Some(stage), instruction) => stage.steps.push(Step {
                line,
                source_text: text.to_owned(),
                instruction,
            }),
            // check_order lets only ARG through before the first FROM.
            (None, _) => {}
        }
    }

    fn finish(self, line_count: usize) -> Result<Dockerfile, ParseError> {
        if self.stages.is_empty() {
            let (line, found) = match self.global_args.last() {
                Some(last) => (last.line, "found only ARG instructions"),
                None => (line_count.max(1), "found no instructions"),
            };
            return Err(error_at(
                self.file_name,
                line,
                format!("expected a FROM instruction, {found}"),
            ));
        };
        Ok(Dockerfile {
            file_name: self.file_name.to_owned(),
            escape: self.escape,
            global_args: self.global_args,
            stages: self.stages,
            ignored_directives: self.ignored_directives,
        })
    }
}

/// Expands a word known to contain no variables (removing quotes/escapes).
fn expand_literal(word: &str, escape: char) -> Result<String, String> {
    expand(word, escape, &EmptyScope).map_err(|e| format!("FROM: cannot expand `{word}`: {e}"))
}

/// `scratch`, `oci:DIR[:TAG]` or a named image.
fn parse_base_image(reference: &str) -> Result<BaseImage, String> {
    parse_image(reference)
        .map_err(|e| format!("FROM: {e} (expected scratch, oci:DIR[:TAG] or NAME[:TAG])"))
}

fn parse_image(reference: &str) -> Result<BaseImage, ReferenceError> {
    if reference == "scratch" {
        Ok(BaseImage::Scratch)
    } else if reference.starts_with("oci:") {
        LayoutRef::parse(reference).map(BaseImage::OciLayout)
    } else {
        ImageRef::parse(reference).map(BaseImage::Named)
    }
}
