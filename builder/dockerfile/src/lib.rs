//! Dockerfile parsing: turns the text of a Dockerfile into typed
//! instructions with their source lines, and expands variables in them the
//! way Docker does, so the builder can key and run each step.
//!
//! # The supported subset
//!
//! - One stage: optional `ARG`s, then one `FROM` (`scratch`,
//!   `oci:DIR[:TAG]`, or `NAME[:TAG]` of an image kept in the store;
//!   `AS name` accepted), then the steps. A second `FROM` is an error.
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
//!   `--chown=user[:group]` and `--chmod=OCTAL`; `ADD --checksum=sha256:HEX`,
//!   required when a source is an `http(s)://` URL.
//! - Variables: `$NAME`, `${NAME}`, `${NAME:-word}`, `${NAME-word}`,
//!   `${NAME:+word}`, `${NAME+word}`, escaped `\$`, single and double quotes
//!   — expanded in `FROM`, `COPY`, `ADD`, `ENV`, `ARG`, `WORKDIR`, `USER`,
//!   `LABEL`, `EXPOSE` and `--chown`; never in `RUN`, `CMD`, `ENTRYPOINT`
//!   (the shell expands those) nor in `--chmod`, `--checksum`, `--network`.
//!
//! Not supported, each a clear error: multi-stage builds (`COPY --from`, a
//! second `FROM`), `FROM --platform`, heredocs (`RUN <<EOF`), other flags
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
//! 2. `let base = dockerfile.base_image(&globals)?`;
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
pub use instruction::{AddSource, Arg, Checksum, Command, Instruction, KeyValue, Network};
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

/// A parsed Dockerfile: one base image and the steps on top of it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Dockerfile {
    /// The name errors are reported under.
    pub file_name: String,
    /// The escape character: `\`, or a backtick after an `escape` directive.
    pub escape: char,
    /// `ARG`s before `FROM`, in file order; usable in `FROM`.
    pub global_args: Vec<GlobalArg>,
    /// The `FROM` line.
    pub from: FromInstruction,
    /// The instructions after `FROM`, in file order.
    pub steps: Vec<Step>,
}

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
}

/// What a `FROM` resolves to once expanded.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum BaseImage {
    /// `FROM scratch`: no parent layers.
    Scratch,
    /// `FROM oci:DIR[:TAG]`: an OCI image layout directory.
    OciLayout(LayoutRef),
    /// `FROM NAME[:TAG]`: a named image (kept in the store under that name).
    Named(ImageRef),
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
        from: None,
        steps: Vec::new(),
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

    /// Expands the `FROM` image in `scope` (normally
    /// [`global_scope`](Self::global_scope)) and says what it names.
    pub fn base_image(&self, scope: &dyn Scope) -> Result<BaseImage, ParseError> {
        let reference = expand(&self.from.image, self.escape, scope).map_err(|e| {
            self.error(
                self.from.line,
                format!("FROM: cannot expand `{}`: {e}", self.from.image),
            )
        })?;
        parse_base_image(&reference).map_err(|message| self.error(self.from.line, message))
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

/// Collects lines into a [`Dockerfile`], enforcing the order: ARGs, one
/// FROM, then steps.
struct Assembler<'a> {
    file_name: &'a str,
    escape: char,
    global_args: Vec<GlobalArg>,
    from: Option<FromInstruction>,
    steps: Vec<Step>,
}

impl Assembler<'_> {
    fn add(&mut self, line: usize, text: &str) -> Result<(), String> {
        let (keyword, args) = parser::split_line(text)?;
        self.check_order(keyword)?;
        match parser::parse_instruction(keyword, args, self.escape)? {
            Parsed::From { image, stage_name } => {
                if !image.contains('$') {
                    parse_base_image(&expand_literal(&image, self.escape)?)?;
                }
                self.from = Some(FromInstruction {
                    line,
                    source_text: text.to_owned(),
                    image,
                    stage_name,
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

    /// Only ARG may come before FROM, and FROM only once.
    fn check_order(&self, keyword: Keyword) -> Result<(), String> {
        match (&self.from, keyword) {
            (Some(first), Keyword::From) => Err(format!(
                "multi-stage builds are not supported yet (found a second FROM; the first is on line {})",
                first.line
            )),
            (None, Keyword::From | Keyword::Arg) | (Some(_), _) => Ok(()),
            (None, other) => Err(format!(
                "expected FROM before {other}: a Dockerfile must start with FROM (only ARG may come before it)"
            )),
        }
    }

    fn push(&mut self, line: usize, text: &str, instruction: Instruction) {
        match (&self.from, instruction) {
            (None, Instruction::Arg(args)) => self
                .global_args
                .extend(args.into_iter().map(|arg| GlobalArg { line, arg })),
            (_, instruction) => self.steps.push(Step {
                line,
                source_text: text.to_owned(),
                instruction,
            }),
        }
    }

    fn finish(self, line_count: usize) -> Result<Dockerfile, ParseError> {
        let Some(from) = self.from else {
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
            from,
            steps: self.steps,
        })
    }
}

/// Expands a word known to contain no variables (removing quotes/escapes).
fn expand_literal(word: &str, escape: char) -> Result<String, String> {
    expand(word, escape, &EmptyScope).map_err(|e| format!("FROM: cannot expand `{word}`: {e}"))
}

/// `scratch`, `oci:DIR[:TAG]` or a named image.
fn parse_base_image(reference: &str) -> Result<BaseImage, String> {
    let parsed = if reference == "scratch" {
        Ok(BaseImage::Scratch)
    } else if reference.starts_with("oci:") {
        LayoutRef::parse(reference).map(BaseImage::OciLayout)
    } else {
        ImageRef::parse(reference).map(BaseImage::Named)
    };
    parsed.map_err(|e| format!("FROM: {e} (expected scratch, oci:DIR[:TAG] or NAME[:TAG])"))
}
