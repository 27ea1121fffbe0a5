//! End-to-end tests: Dockerfile text in, typed instructions or exact
//! `FILE:LINE: message` errors out. Unit tests of the pieces live next to
//! them (lexer, words, json, expand, instruction, parser).

#![allow(clippy::unwrap_used, clippy::expect_used)]

use super::*;

fn parse_ok(text: &str) -> Dockerfile {
    match parse("Dockerfile", text) {
        Ok(dockerfile) => dockerfile,
        Err(e) => panic!("unexpected error: {e}"),
    }
}

fn parse_err(text: &str) -> String {
    match parse("Dockerfile", text) {
        Ok(dockerfile) => panic!("expected an error, parsed {dockerfile:?}"),
        Err(e) => e.to_string(),
    }
}

/// The single step of `FROM scratch` followed by `step`.
fn only_step(step: &str) -> Instruction {
    let dockerfile = parse_ok(&format!("FROM scratch\n{step}\n"));
    assert_eq!(
        dockerfile.stages[0].steps.len(),
        1,
        "{:?}",
        dockerfile.stages[0].steps
    );
    dockerfile.stages[0].steps[0].instruction.clone()
}

/// The error for `FROM scratch` followed by `step` (so it is on line 2).
fn step_err(step: &str) -> String {
    parse_err(&format!("FROM scratch\n{step}\n"))
}

fn vars(pairs: &[(&str, &str)]) -> Vec<(String, String)> {
    pairs
        .iter()
        .map(|(k, v)| ((*k).to_owned(), (*v).to_owned()))
        .collect()
}

/// The single step of `FROM scratch` + `step`, expanded in `pairs`.
fn expanded_step(step: &str, pairs: &[(&str, &str)]) -> Result<Instruction, String> {
    let dockerfile = parse_ok(&format!("FROM scratch\n{step}\n"));
    dockerfile
        .expand_step(&dockerfile.stages[0].steps[0], &vars(pairs))
        .map_err(|e| e.to_string())
}

fn strings(items: &[&str]) -> Vec<String> {
    items.iter().map(|s| (*s).to_owned()).collect()
}

fn kv(key: &str, value: &str) -> KeyValue {
    KeyValue {
        key: key.to_owned(),
        value: value.to_owned(),
    }
}

fn shell(text: &str) -> Command {
    Command::Shell(text.to_owned())
}

fn exec(argv: &[&str]) -> Command {
    Command::Exec(strings(argv))
}

fn base(text: &str) -> Result<BaseImage, String> {
    let dockerfile = parse("Dockerfile", text).map_err(|e| e.to_string())?;
    dockerfile
        .base_image(0, &EmptyScope)
        .map_err(|e| e.to_string())
}

// ---------------------------------------------------------------- FROM

#[test]
fn from_scratch_alone_is_a_dockerfile_without_steps() {
    let dockerfile = parse_ok("FROM scratch\n");
    assert_eq!(dockerfile.stages[0].from.line, 1);
    assert_eq!(dockerfile.stages[0].from.source_text, "FROM scratch");
    assert_eq!(dockerfile.stages[0].from.stage_name, None);
    assert!(dockerfile.stages[0].steps.is_empty());
    assert_eq!(dockerfile.escape, '\\');
    assert_eq!(base("FROM scratch").unwrap(), BaseImage::Scratch);
}

#[test]
fn from_oci_layout_splits_directory_and_tag_at_the_first_colon() {
    assert_eq!(
        base("FROM oci:./images/base:v1").unwrap(),
        BaseImage::OciLayout(LayoutRef::parse("oci:./images/base:v1").unwrap())
    );
    assert_eq!(
        base("FROM oci:/abs/dir").unwrap(),
        BaseImage::OciLayout(LayoutRef::parse("oci:/abs/dir").unwrap())
    );
}

#[test]
fn from_stored_name_takes_an_optional_tag() {
    assert_eq!(
        base("FROM alpine:3.19").unwrap(),
        BaseImage::Named(ImageRef::parse("alpine:3.19").unwrap())
    );
    assert_eq!(
        base("FROM team/app-base").unwrap(),
        BaseImage::Named(ImageRef::parse("team/app-base").unwrap())
    );
}

#[test]
fn from_accepts_as_name_in_any_case() {
    let dockerfile = parse_ok("from alpine:3 As Build\n");
    assert_eq!(dockerfile.stages[0].from.image, "alpine:3");
    assert_eq!(
        dockerfile.stages[0].from.stage_name.as_deref(),
        Some("build")
    );
}

#[test]
fn from_errors_say_what_was_expected() {
    assert_eq!(
        parse_err("FROM\n"),
        "Dockerfile:1: FROM: expected an image (scratch, oci:DIR[:TAG] or NAME[:TAG]), found nothing"
    );
    assert_eq!(
        parse_err("FROM a b\n"),
        "Dockerfile:1: FROM: expected `IMAGE [AS NAME]`, found `a b`"
    );
    assert_eq!(
        parse_err("FROM a AS 1x\n"),
        "Dockerfile:1: FROM: expected a stage name of a letter followed by letters, digits, -, _ or ., found `1x`"
    );
    assert_eq!(
        parse_err("FROM --platform alpine\n"),
        "Dockerfile:1: FROM: flag --platform needs a value (--platform=...)"
    );
}

#[test]
fn from_platform_is_kept_as_written_and_expanded_with_the_platform_args() {
    let df = parse_ok(
        "FROM --platform=$BUILDPLATFORM alpine AS build\nFROM alpine\nFROM --platform=linux/arm64 alpine\n",
    );
    assert_eq!(
        df.stages[0].from.platform.as_deref(),
        Some("$BUILDPLATFORM")
    );
    let scope = vec![("BUILDPLATFORM".to_owned(), "linux/amd64".to_owned())];
    assert_eq!(
        df.base_platform(0, &scope).unwrap().as_deref(),
        Some("linux/amd64")
    );
    assert_eq!(df.base_platform(1, &scope).unwrap(), None);
    assert_eq!(
        df.base_platform(2, &scope).unwrap().as_deref(),
        Some("linux/arm64")
    );
}

#[test]
fn run_flags_refused_on_purpose_say_why() {
    assert_eq!(
        parse_err("FROM scratch\nRUN --mount=type=cache,target=/root/.cache make\n"),
        "Dockerfile:2: RUN --mount (cache, bind, tmpfs, secret and ssh mounts) is not supported \
         yet; copy what the step needs into the image instead"
    );
    assert_eq!(
        parse_err("FROM scratch\nRUN --security=insecure make\n"),
        "Dockerfile:2: RUN --security is refused: a step never runs with more privilege than \
         the sandbox gives it"
    );
}

#[test]
fn from_image_references_are_validated() {
    assert_eq!(
        parse_err("FROM Ubuntu\n"),
        "Dockerfile:1: FROM: invalid image reference `Ubuntu`: the repository name `Ubuntu` \
         must be lower-case (expected scratch, oci:DIR[:TAG] or NAME[:TAG])"
    );
    assert_eq!(
        parse_err("FROM alpine@sha256:abcd\n"),
        "Dockerfile:1: FROM: invalid image reference `alpine@sha256:abcd`: the digest \
         `sha256:abcd` must be sha256: and 64 lower-case hex digits \
         (expected scratch, oci:DIR[:TAG] or NAME[:TAG])"
    );
    assert!(parse_err("FROM alpine:-x\n").contains("the tag `-x` must be"));
    assert!(parse_err("FROM oci::tag\n").contains("the directory after `oci:` is missing"));
    let hosted = base("FROM localhost:5000/app\n").unwrap();
    let BaseImage::Named(image) = hosted else {
        panic!("{hosted:?}")
    };
    assert_eq!(image.registry(), "localhost:5000");
}

#[test]
fn stages_are_named_referenced_and_targeted() {
    let df = parse_ok(
        "FROM scratch AS Build\nRUN make\nFROM build AS test\nRUN check\nFROM scratch\n\
         COPY --from=build /out /app\nCOPY --from=0 /out /app2\nCOPY --from=oci:/img /x /y\n",
    );
    assert_eq!(df.stages.len(), 3);
    assert_eq!(df.stages[0].from.stage_name.as_deref(), Some("build"));
    assert_eq!(df.stages[2].steps.len(), 3);
    // FROM of an earlier stage's name (any case) is that stage.
    assert_eq!(
        df.base_image(1, &EmptyScope).unwrap(),
        BaseImage::Stage(StageRef(0))
    );
    assert_eq!(df.copy_source_stage("BUILD", 2), Some(StageRef(0)));
    assert_eq!(df.copy_source_stage("0", 2), Some(StageRef(0)));
    // Only earlier stages count; anything else is an image.
    assert_eq!(df.copy_source_stage("2", 2), None);
    assert_eq!(df.copy_source_stage("test", 1), None);
    assert_eq!(df.copy_source_stage("oci:/img", 2), None);
    assert_eq!(df.target_stage(None), Ok(2));
    assert_eq!(df.target_stage(Some("test")), Ok(1));
    assert_eq!(df.target_stage(Some("0")), Ok(0));
    assert_eq!(
        df.target_stage(Some("nope")).unwrap_err(),
        "--target nope: Dockerfile has no such stage (stages: build, test, 2)"
    );
}

#[test]
fn a_stage_name_is_used_once() {
    assert_eq!(
        parse_err("FROM scratch AS a\nRUN true\nFROM scratch AS A\n"),
        "Dockerfile:3: FROM: the stage name `a` is already used on line 1"
    );
}

#[test]
fn global_args_feed_the_from_line_and_build_args_override_them() {
    let dockerfile = parse_ok(
        "ARG REGISTRY=team\nARG BASE=${REGISTRY}/base\nARG TAG\nFROM ${BASE}:${TAG:-stable}\n",
    );
    assert_eq!(dockerfile.global_args.len(), 3);
    assert_eq!(dockerfile.global_args[2].line, 3);
    assert_eq!(dockerfile.stages[0].from.image, "${BASE}:${TAG:-stable}");

    let defaults = dockerfile.global_scope(&EmptyScope).unwrap();
    assert_eq!(
        defaults,
        vars(&[("REGISTRY", "team"), ("BASE", "team/base")])
    );
    assert_eq!(
        dockerfile.base_image(0, &defaults).unwrap(),
        BaseImage::Named(ImageRef::parse("team/base:stable").unwrap())
    );

    let overridden = dockerfile
        .global_scope(&vars(&[
            ("REGISTRY", "ops"),
            ("TAG", "v2"),
            ("UNDECLARED", "x"),
        ]))
        .unwrap();
    assert_eq!(
        overridden,
        vars(&[("REGISTRY", "ops"), ("BASE", "ops/base"), ("TAG", "v2")])
    );
    assert_eq!(
        dockerfile.base_image(0, &overridden).unwrap(),
        BaseImage::Named(ImageRef::parse("ops/base:v2").unwrap())
    );
}

#[test]
fn from_with_a_variable_is_validated_when_expanded() {
    let dockerfile = parse_ok("ARG BASE\n\nFROM $BASE\n");
    assert_eq!(
        dockerfile
            .base_image(0, &EmptyScope)
            .unwrap_err()
            .to_string(),
        "Dockerfile:3: FROM: invalid image reference ``: the name is empty \
         (expected scratch, oci:DIR[:TAG] or NAME[:TAG])"
    );
    assert_eq!(
        dockerfile
            .base_image(0, &vars(&[("BASE", "oci:/imgs:v1")]))
            .unwrap(),
        BaseImage::OciLayout(LayoutRef::parse("oci:/imgs:v1").unwrap())
    );
}

// ------------------------------------------------------ order and FROM

#[test]
fn instruction_before_from_is_an_error() {
    assert_eq!(
        parse_err("# comment\nARG X\nRUN true\nFROM scratch\n"),
        "Dockerfile:3: expected FROM before RUN: a Dockerfile must start with FROM (only ARG may come before it)"
    );
}

#[test]
fn file_without_instructions_is_an_error() {
    assert_eq!(
        parse_err(""),
        "Dockerfile:1: expected a FROM instruction, found no instructions"
    );
    assert_eq!(
        parse_err("# only\n\n# comments\n"),
        "Dockerfile:3: expected a FROM instruction, found no instructions"
    );
}

#[test]
fn file_with_only_args_is_an_error_at_the_last_arg() {
    assert_eq!(
        parse_err("ARG A\n\nARG B C\n"),
        "Dockerfile:3: expected a FROM instruction, found only ARG instructions"
    );
}

#[test]
fn errors_use_the_given_file_name() {
    let err = parse("ci/build.Dockerfile", "RUN x\n").unwrap_err();
    assert_eq!(err.file, "ci/build.Dockerfile");
    assert_eq!(err.line, 1);
    assert!(
        err.to_string()
            .starts_with("ci/build.Dockerfile:1: expected FROM")
    );
}

// ------------------------------------------------- unknown instructions

#[test]
fn unsupported_docker_instructions_are_named_with_their_line() {
    let text = "FROM scratch\n\n# comment\nRUN a \\\n  b\n\nonbuild RUN make\n";
    assert_eq!(
        parse_err(text),
        "Dockerfile:7: unsupported instruction ONBUILD (supported: FROM, RUN, COPY, ADD, ENV, \
         ARG, WORKDIR, USER, LABEL, CMD, ENTRYPOINT, EXPOSE, SHELL, VOLUME, STOPSIGNAL, MAINTAINER, \
         HEALTHCHECK)"
    );
    assert!(
        step_err("ONBUILD RUN x").starts_with("Dockerfile:2: unsupported instruction ONBUILD "),
        "ONBUILD"
    );
}

#[test]
fn garbage_is_an_unknown_instruction() {
    assert!(
        step_err("echo hello")
            .starts_with("Dockerfile:2: unknown instruction echo (supported: FROM,")
    );
}

// ----------------------------------------------------------------- RUN

#[test]
fn run_shell_form_keeps_the_text_unexpanded() {
    assert_eq!(
        only_step("run echo \"$HOME\" && ls ${X:-y}"),
        Instruction::Run {
            command: shell("echo \"$HOME\" && ls ${X:-y}"),
            network: Network::None
        }
    );
}

#[test]
fn run_exec_form_is_a_json_array() {
    assert_eq!(
        only_step(r#"RUN ["sh", "-c", "echo \"hi\"\n"]"#),
        Instruction::Run {
            command: exec(&["sh", "-c", "echo \"hi\"\n"]),
            network: Network::None
        }
    );
}

#[test]
fn run_malformed_json_falls_back_to_shell_form() {
    assert_eq!(
        only_step("RUN [ -f /etc/passwd ] && echo yes"),
        Instruction::Run {
            command: shell("[ -f /etc/passwd ] && echo yes"),
            network: Network::None
        }
    );
    assert_eq!(
        only_step("RUN [\"unterminated\""),
        Instruction::Run {
            command: shell("[\"unterminated\""),
            network: Network::None
        }
    );
}

#[test]
fn run_json_array_of_non_strings_is_an_error() {
    assert_eq!(
        step_err("RUN [\"sleep\", 5]"),
        "Dockerfile:2: RUN: expected the exec form to be a JSON array of strings, but element 2 is a number"
    );
}

#[test]
fn run_needs_a_command() {
    assert_eq!(
        step_err("RUN"),
        "Dockerfile:2: RUN: expected a command, found nothing"
    );
    assert_eq!(
        step_err("RUN --network=host"),
        "Dockerfile:2: RUN: expected a command, found nothing"
    );
    assert_eq!(
        step_err("RUN []"),
        "Dockerfile:2: RUN: expected a command, found an empty exec form []"
    );
}

#[test]
fn run_network_flag_selects_host_or_none() {
    let network = |line: &str| match only_step(line) {
        Instruction::Run { network, .. } => network,
        other => panic!("{other:?}"),
    };
    assert_eq!(network("RUN --network=host curl x"), Network::Host);
    assert_eq!(network("RUN --network=none true"), Network::None);
    assert_eq!(network("RUN --network=default true"), Network::None);
    assert_eq!(network("RUN --network=\"host\" [\"curl\"]"), Network::Host);
}

#[test]
fn run_flag_errors_are_exact() {
    assert_eq!(
        step_err("RUN --network=bridge true"),
        "Dockerfile:2: RUN: --network=bridge is not supported (expected none, host or default)"
    );
    assert_eq!(
        step_err("RUN --foo true"),
        "Dockerfile:2: RUN: unknown flag --foo (supported: --network)"
    );
    assert_eq!(
        step_err("RUN --network true"),
        "Dockerfile:2: RUN: flag --network needs a value (--network=...)"
    );
    assert_eq!(
        step_err("RUN --network= true"),
        "Dockerfile:2: RUN: flag --network needs a value (--network=...)"
    );
    assert_eq!(
        step_err("RUN --network=host --network=none true"),
        "Dockerfile:2: RUN: flag --network is given twice"
    );
}

#[test]
fn flags_are_only_recognised_before_the_first_argument() {
    assert_eq!(
        only_step("RUN echo --network=host"),
        Instruction::Run {
            command: shell("echo --network=host"),
            network: Network::None
        }
    );
}

#[test]
fn run_heredocs_are_read_as_buildkit_reads_them() {
    // A command reading a heredoc: the shell gets the whole text.
    let df = parse_ok(
        "FROM scratch\nRUN cat <<EOF > /etc/motd\nhello $USER\n# not a comment\n\nEOF\nRUN true\n",
    );
    let steps: Vec<(usize, &Instruction)> = df.stages[0]
        .steps
        .iter()
        .map(|s| (s.line, &s.instruction))
        .collect();
    assert_eq!(
        steps,
        [
            (
                2,
                &Instruction::Run {
                    command: shell("cat <<EOF > /etc/motd\nhello $USER\n# not a comment\n\nEOF"),
                    network: Network::None
                }
            ),
            (
                7,
                &Instruction::Run {
                    command: shell("true"),
                    network: Network::None
                }
            ),
        ]
    );
    // A heredoc alone is the script; `<<-` strips leading tabs; quotes
    // around the delimiter do not change where it ends.
    assert_eq!(
        parse_ok("FROM scratch\nRUN --network=none <<-\"EOT\"\n\tset -e\n\techo a\n\tEOT\n").stages
            [0]
        .steps[0]
            .instruction,
        Instruction::Run {
            command: shell("set -e\necho a"),
            network: Network::None
        }
    );
    // Two heredocs for one command, in order.
    assert_eq!(
        parse_ok("FROM scratch\nRUN paste <<A <<B\n1\nA\n2\nB\n").stages[0].steps[0].instruction,
        Instruction::Run {
            command: shell("paste <<A <<B\n1\nA\n2\nB"),
            network: Network::None
        }
    );
    for (text, expect) in [
        (
            "FROM scratch\nRUN <<EOF\necho never ends\n",
            "Dockerfile:2: unexpected end of file: the heredoc <<EOF opened on this line",
        ),
        (
            "FROM scratch\nRUN <<A <<B\n1\nA\n2\nB\n",
            "Dockerfile:2: RUN: expected one heredoc as the script, found 2",
        ),
        (
            "FROM scratch\nRUN <<EOF\n#!/usr/bin/env python3\nprint(1)\nEOF\n",
            "Dockerfile:2: RUN <<EOF: a heredoc script with its own interpreter (#!) is not supported",
        ),
    ] {
        let message = parse_err(text);
        assert!(message.starts_with(expect), "{text:?}: {message}");
    }
}

#[test]
fn copy_heredocs_are_inline_files_and_add_heredocs_are_refused() {
    assert_eq!(
        parse_ok("FROM scratch\nCOPY --chmod=755 <<-'EOT' /usr/local/bin/hello\n\t#!/bin/sh\n\techo \"hi $1\"\n\tEOT\n")
            .stages[0]
            .steps[0]
            .instruction,
        Instruction::Copy {
            sources: Vec::new(),
            dest: "/usr/local/bin/hello".into(),
            chown: None,
            chmod: Some(0o755),
            from: None,
            heredocs: vec![InlineFile {
                name: "EOT".into(),
                content: "#!/bin/sh\necho \"hi $1\"\n".into(),
            }],
        }
    );
    let df =
        parse_ok("FROM scratch\nCOPY <<a.txt <<b.txt /etc/\none\na.txt\ntwo\nb.txt\nRUN true\n");
    let Instruction::Copy { heredocs, dest, .. } = &df.stages[0].steps[0].instruction else {
        panic!("{:?}", df.stages[0].steps[0]);
    };
    assert_eq!(dest, "/etc/");
    let files: Vec<(&str, &str)> = heredocs
        .iter()
        .map(|f| (f.name.as_str(), f.content.as_str()))
        .collect();
    assert_eq!(files, [("a.txt", "one\n"), ("b.txt", "two\n")]);
    assert_eq!(df.stages[0].steps[1].line, 7);
    for (text, expect) in [
        (
            "COPY <<EOF /x\nhello $USER\nEOF\n",
            "COPY <<EOF: the body holds `$`, which Docker would expand; quote the delimiter",
        ),
        (
            "COPY <<EOF data.txt /x\nhi\nEOF\n",
            "COPY: expected heredocs then a destination",
        ),
        (
            "COPY --from=build <<EOF /x\nhi\nEOF\n",
            "COPY: --from copies files, not heredocs",
        ),
        (
            "ADD <<-EOT /etc/motd\nhi\nEOT\n",
            "ADD: heredocs are not supported (found <<-EOT)",
        ),
    ] {
        let message = parse_err(&format!("FROM scratch\n{text}"));
        assert!(message.contains(expect), "{text:?}: {message}");
    }
    assert_eq!(
        only_step("RUN cat <<< 'here string' && echo '<<EOF'"),
        Instruction::Run {
            command: shell("cat <<< 'here string' && echo '<<EOF'"),
            network: Network::None
        }
    );
}

// ------------------------------------------------------ CMD, ENTRYPOINT

#[test]
fn cmd_and_entrypoint_take_both_forms() {
    assert_eq!(
        only_step("CMD [\"serve\", \"--port=80\"]"),
        Instruction::Cmd(exec(&["serve", "--port=80"]))
    );
    assert_eq!(
        only_step("CMD serve $PORT"),
        Instruction::Cmd(shell("serve $PORT"))
    );
    assert_eq!(
        only_step("ENTRYPOINT [\"/bin/app\"]"),
        Instruction::Entrypoint(exec(&["/bin/app"]))
    );
    assert_eq!(
        only_step("entrypoint exec /bin/app"),
        Instruction::Entrypoint(shell("exec /bin/app"))
    );
}

#[test]
fn empty_exec_form_clears_cmd_and_entrypoint() {
    assert_eq!(only_step("CMD []"), Instruction::Cmd(exec(&[])));
    assert_eq!(
        only_step("ENTRYPOINT [ ]"),
        Instruction::Entrypoint(exec(&[]))
    );
}

#[test]
fn cmd_and_entrypoint_errors() {
    assert_eq!(
        step_err("CMD"),
        "Dockerfile:2: CMD: expected a command, found nothing"
    );
    assert_eq!(
        step_err("ENTRYPOINT [\"a\", null]"),
        "Dockerfile:2: ENTRYPOINT: expected the exec form to be a JSON array of strings, but element 2 is null"
    );
    assert_eq!(
        step_err("CMD --help"),
        "Dockerfile:2: CMD: unknown flag --help (CMD takes no flags)"
    );
}

#[test]
fn run_cmd_and_entrypoint_are_not_expanded() {
    let scope = [("X", "expanded")];
    assert_eq!(
        expanded_step("RUN echo $X", &scope).unwrap(),
        Instruction::Run {
            command: shell("echo $X"),
            network: Network::None
        }
    );
    assert_eq!(
        expanded_step("CMD [\"$X\"]", &scope).unwrap(),
        Instruction::Cmd(exec(&["$X"]))
    );
}

// ---------------------------------------------------------------- COPY

#[test]
fn copy_takes_sources_and_a_destination() {
    assert_eq!(
        only_step("COPY a.txt dir/ /app/"),
        Instruction::Copy {
            sources: strings(&["a.txt", "dir/"]),
            dest: "/app/".to_owned(),
            chown: None,
            chmod: None,
            from: None,
            heredocs: Vec::new(),
        }
    );
}

#[test]
fn copy_json_form_allows_spaces_in_paths() {
    assert_eq!(
        only_step("COPY [\"my file.txt\", \"/app/my file.txt\"]"),
        Instruction::Copy {
            sources: strings(&["my file.txt"]),
            dest: "/app/my file.txt".to_owned(),
            chown: None,
            chmod: None,
            from: None,
            heredocs: Vec::new(),
        }
    );
}

#[test]
fn copy_flags_chown_and_chmod() {
    assert_eq!(
        only_step("COPY --chown=app:staff --chmod=0640 conf /etc/app/"),
        Instruction::Copy {
            sources: strings(&["conf"]),
            dest: "/etc/app/".to_owned(),
            chown: Some("app:staff".to_owned()),
            chmod: Some(0o640),
            from: None,
            heredocs: Vec::new(),
        }
    );
    assert_eq!(
        only_step("COPY --chown=1000 a /b"),
        Instruction::Copy {
            sources: strings(&["a"]),
            dest: "/b".to_owned(),
            chown: Some("1000".to_owned()),
            chmod: None,
            from: None,
            heredocs: Vec::new(),
        }
    );
}

#[test]
fn copy_errors_are_exact() {
    assert!(step_err("COPY --from= /out /app").contains("--from needs a value"));
    assert_eq!(
        step_err("COPY only-one"),
        "Dockerfile:2: COPY: expected at least one source and a destination, found 1 argument"
    );
    assert_eq!(
        step_err("COPY"),
        "Dockerfile:2: COPY: expected at least one source and a destination, found 0 arguments"
    );
    assert_eq!(
        step_err("COPY --chmod=rwx a /b"),
        "Dockerfile:2: COPY: --chmod: expected an octal mode up to 7777 such as 0755, found rwx"
    );
    assert_eq!(
        step_err("COPY --chown=a:b:c a /b"),
        "Dockerfile:2: COPY: --chown: expected user[:group], found `a:b:c`"
    );
    assert_eq!(
        step_err("COPY --parents a /b"),
        "Dockerfile:2: COPY: unknown flag --parents (supported: --chown, --chmod, --from, --link)"
    );
    assert_eq!(
        step_err("COPY [\"a\", 1]"),
        "Dockerfile:2: COPY: expected the exec form to be a JSON array of strings, but element 2 is a number"
    );
}

#[test]
fn copy_words_are_expanded_and_unquoted() {
    assert_eq!(
        expanded_step(
            "COPY --chown=${APP_USER} $SRC/*.conf \"${DEST:-/etc}/\"",
            &[("SRC", "config"), ("APP_USER", "app:app")]
        )
        .unwrap(),
        Instruction::Copy {
            sources: strings(&["config/*.conf"]),
            dest: "/etc/".to_owned(),
            chown: Some("app:app".to_owned()),
            chmod: None,
            from: None,
            heredocs: Vec::new(),
        }
    );
}

#[test]
fn copy_source_that_expands_to_nothing_is_an_error() {
    assert_eq!(
        expanded_step("COPY $MISSING /app", &[]).unwrap_err(),
        "Dockerfile:2: COPY: expected a source, but `$MISSING` expands to an empty string"
    );
}

// ----------------------------------------------------------------- ADD

fn sha() -> String {
    format!("sha256:{}", "0123456789abcdef".repeat(4))
}

#[test]
fn add_url_with_checksum_is_a_url_source() {
    let line = format!(
        "ADD --checksum={} https://example.com/tool.tgz /opt/",
        sha()
    );
    assert_eq!(
        only_step(&line),
        Instruction::Add {
            sources: vec![AddSource::Url("https://example.com/tool.tgz".to_owned())],
            dest: "/opt/".to_owned(),
            chown: None,
            chmod: None,
            checksum: Some(Checksum::parse(&sha()).unwrap())
        }
    );
}

#[test]
fn add_local_paths_take_chown_and_chmod() {
    assert_eq!(
        only_step("ADD --chown=0:0 --chmod=755 [\"a.tar\", \"b\", \"/x/\"]"),
        Instruction::Add {
            sources: vec![
                AddSource::Path("a.tar".to_owned()),
                AddSource::Path("b".to_owned())
            ],
            dest: "/x/".to_owned(),
            chown: Some("0:0".to_owned()),
            chmod: Some(0o755),
            checksum: None
        }
    );
}

#[test]
fn add_url_without_checksum_is_refused() {
    assert_eq!(
        step_err("ADD http://example.com/x /x"),
        "Dockerfile:2: ADD: downloading http://example.com/x requires --checksum=sha256:<hex> so the build is reproducible"
    );
}

#[test]
fn add_url_hidden_in_a_variable_is_checked_when_expanded() {
    assert_eq!(
        expanded_step("ADD $URL /x", &[("URL", "https://example.com/x")]).unwrap_err(),
        "Dockerfile:2: ADD: downloading https://example.com/x requires --checksum=sha256:<hex> so the build is reproducible"
    );
}

#[test]
fn add_checksum_errors_are_exact() {
    assert_eq!(
        step_err("ADD --checksum=md5:abc https://x/y /y"),
        "Dockerfile:2: ADD: --checksum: expected sha256:<64 hex digits>, found md5:abc"
    );
    assert_eq!(
        step_err("ADD --checksum=sha256:abc https://x/y /y"),
        "Dockerfile:2: ADD: --checksum: expected sha256: followed by 64 hex digits, found 3 characters in sha256:abc"
    );
    assert_eq!(
        step_err(&format!("ADD --checksum={} local.tgz /y", sha())),
        "Dockerfile:2: ADD: --checksum applies to a URL source, found the local path `local.tgz`"
    );
    assert_eq!(
        step_err(&format!(
            "ADD --checksum={} https://a/1 https://a/2 /y/",
            sha()
        )),
        "Dockerfile:2: ADD: --checksum applies to a single URL source, found 2 sources"
    );
    assert_eq!(
        step_err("ADD --keep-git-dir=true x /y"),
        "Dockerfile:2: ADD: unknown flag --keep-git-dir (supported: --chown, --chmod, --checksum, --link)"
    );
}

// ----------------------------------------------------------------- ENV

#[test]
fn env_pairs_keep_their_quotes_until_expanded() {
    let step = "ENV A=1 B=\"two words\" C='$literal' D=x\\ y";
    assert_eq!(
        only_step(step),
        Instruction::Env(vec![
            kv("A", "1"),
            kv("B", "\"two words\""),
            kv("C", "'$literal'"),
            kv("D", "x\\ y")
        ])
    );
    assert_eq!(
        expanded_step(step, &[]).unwrap(),
        Instruction::Env(vec![
            kv("A", "1"),
            kv("B", "two words"),
            kv("C", "$literal"),
            kv("D", "x y")
        ])
    );
}

#[test]
fn env_legacy_form_takes_the_rest_of_the_line() {
    assert_eq!(
        only_step("ENV GREETING hello  big world"),
        Instruction::Env(vec![kv("GREETING", "hello  big world")])
    );
}

#[test]
fn env_values_see_the_scope_from_before_the_instruction() {
    assert_eq!(
        expanded_step(
            "ENV PATH=/opt/bin:$PATH OLD=$A A=new",
            &[("PATH", "/usr/bin"), ("A", "old")]
        )
        .unwrap(),
        Instruction::Env(vec![
            kv("PATH", "/opt/bin:/usr/bin"),
            kv("OLD", "old"),
            kv("A", "new")
        ])
    );
}

#[test]
fn later_steps_see_earlier_env_values_through_the_scope() {
    let dockerfile = parse_ok("FROM scratch\nENV DIR=/srv\nWORKDIR $DIR/app\n");
    let mut scope: Vec<(String, String)> = Vec::new();
    let mut workdir = None;
    for step in &dockerfile.stages[0].steps {
        match dockerfile.expand_step(step, &scope).unwrap() {
            Instruction::Env(pairs) => scope.extend(pairs.into_iter().map(|p| (p.key, p.value))),
            Instruction::Workdir(path) => workdir = Some(path),
            other => panic!("{other:?}"),
        }
    }
    assert_eq!(workdir.as_deref(), Some("/srv/app"));
}

#[test]
fn env_errors_are_exact() {
    assert_eq!(
        step_err("ENV"),
        "Dockerfile:2: ENV: expected KEY=VALUE, found nothing"
    );
    assert_eq!(
        step_err("ENV ALONE"),
        "Dockerfile:2: ENV: expected a value for ALONE (write ALONE=VALUE)"
    );
    assert_eq!(
        step_err("ENV A=1 B"),
        "Dockerfile:2: ENV: expected KEY=VALUE, found `B`"
    );
    assert_eq!(
        step_err("ENV =x"),
        "Dockerfile:2: ENV: expected a name before = in `=x`"
    );
    assert_eq!(
        step_err("ENV A=\"unterminated"),
        "Dockerfile:2: ENV: cannot expand `\"unterminated`: unterminated double quote"
    );
}

// ----------------------------------------------------- LABEL, ARG, etc.

#[test]
fn label_pairs_with_quoting() {
    let step = "LABEL org.opencontainers.image.title=\"My App\" \"with space\"=yes version=$V";
    assert_eq!(
        expanded_step(step, &[("V", "1.2")]).unwrap(),
        Instruction::Label(vec![
            kv("org.opencontainers.image.title", "My App"),
            kv("with space", "yes"),
            kv("version", "1.2")
        ])
    );
    assert_eq!(
        only_step("LABEL maintainer someone@example.com"),
        Instruction::Label(vec![kv("maintainer", "someone@example.com")])
    );
}

#[test]
fn arg_with_and_without_defaults() {
    assert_eq!(
        only_step("ARG VERSION=1.0 DEBUG"),
        Instruction::Arg(vec![
            Arg {
                name: "VERSION".to_owned(),
                default: Some("1.0".to_owned())
            },
            Arg {
                name: "DEBUG".to_owned(),
                default: None
            }
        ])
    );
    assert_eq!(
        expanded_step("ARG DIR=\"$HOME/x y\"", &[("HOME", "/root")]).unwrap(),
        Instruction::Arg(vec![Arg {
            name: "DIR".to_owned(),
            default: Some("/root/x y".to_owned())
        }])
    );
    assert_eq!(
        step_err("ARG"),
        "Dockerfile:2: ARG: expected NAME or NAME=DEFAULT, found nothing"
    );
    assert_eq!(
        step_err("ARG =1"),
        "Dockerfile:2: ARG: expected a name before = in `=1`"
    );
}

#[test]
fn workdir_takes_the_whole_line_and_is_expanded() {
    assert_eq!(
        only_step("WORKDIR /my dir"),
        Instruction::Workdir("/my dir".to_owned())
    );
    assert_eq!(
        expanded_step("WORKDIR ${BASE:-/srv}/app", &[]).unwrap(),
        Instruction::Workdir("/srv/app".to_owned())
    );
    assert_eq!(
        step_err("WORKDIR"),
        "Dockerfile:2: WORKDIR: expected a path, found nothing"
    );
    assert_eq!(
        expanded_step("WORKDIR $NOPE", &[]).unwrap_err(),
        "Dockerfile:2: WORKDIR: expected a path, but `$NOPE` expands to an empty string"
    );
}

#[test]
fn user_is_user_and_optional_group() {
    assert_eq!(
        only_step("USER app:staff"),
        Instruction::User("app:staff".to_owned())
    );
    assert_eq!(
        expanded_step("USER ${UID}", &[("UID", "1000")]).unwrap(),
        Instruction::User("1000".to_owned())
    );
    assert_eq!(
        step_err("USER a b"),
        "Dockerfile:2: USER: expected user[:group], found `a b`"
    );
    assert_eq!(
        step_err("USER"),
        "Dockerfile:2: USER: expected user[:group], found nothing"
    );
}

#[test]
fn expose_ports_are_canonical_once_expanded() {
    assert_eq!(
        only_step("EXPOSE 80 443/tcp 53/udp"),
        Instruction::Expose(strings(&["80", "443/tcp", "53/udp"]))
    );
    assert_eq!(
        expanded_step("EXPOSE 80 $EXTRA 53/UDP", &[("EXTRA", "8080 9090/tcp")]).unwrap(),
        Instruction::Expose(strings(&["80/tcp", "8080/tcp", "9090/tcp", "53/udp"]))
    );
}

#[test]
fn expose_errors_are_exact() {
    assert_eq!(
        step_err("EXPOSE 80 99999"),
        "Dockerfile:2: EXPOSE: expected a port number from 1 to 65535, found `99999` in `99999`"
    );
    assert_eq!(
        expanded_step("EXPOSE 8000-8002 53-54/udp", &[]).unwrap(),
        Instruction::Expose(strings(&[
            "8000/tcp", "8001/tcp", "8002/tcp", "53/udp", "54/udp"
        ]))
    );
    for (spec, expect) in [
        ("9000-8000", "ends before it starts"),
        ("1-65535", "names more than 1024 ports"),
        ("80-", "expected a port number"),
        ("-80", "expected a port number"),
        ("80-90-100", "expected a port number"),
    ] {
        let message = step_err(&format!("EXPOSE {spec}"));
        assert!(message.contains(expect), "{spec}: {message}");
    }
    assert_eq!(
        step_err("EXPOSE 80/http"),
        "Dockerfile:2: EXPOSE: expected protocol tcp, udp or sctp, found `http` in `80/http`"
    );
    assert_eq!(
        step_err("EXPOSE"),
        "Dockerfile:2: EXPOSE: expected at least one port such as 80 or 53/udp, found nothing"
    );
    assert_eq!(
        expanded_step("EXPOSE $NONE", &[]).unwrap_err(),
        "Dockerfile:2: EXPOSE: expected at least one port, found none"
    );
}

#[test]
fn instructions_without_flags_refuse_them() {
    assert_eq!(
        step_err("WORKDIR --x=1 /a"),
        "Dockerfile:2: WORKDIR: unknown flag --x (WORKDIR takes no flags)"
    );
}

// ------------------------------------------------ lines and continuations

#[test]
fn continuations_join_lines_and_keep_the_starting_line_number() {
    let text = "FROM scratch\n\
                RUN apt-get update && \\\n\
                \x20   # a comment inside the continuation\n\
                \n\
                \x20   apt-get install -y curl \\   \n\
                \x20   && rm -rf /var/lib/apt/lists/*\n\
                ENV A=1\n";
    let dockerfile = parse_ok(text);
    assert_eq!(dockerfile.stages[0].steps.len(), 2);
    assert_eq!(dockerfile.stages[0].steps[0].line, 2);
    assert_eq!(
        dockerfile.stages[0].steps[0].source_text,
        "RUN apt-get update &&     apt-get install -y curl     && rm -rf /var/lib/apt/lists/*"
    );
    assert_eq!(dockerfile.stages[0].steps[1].line, 7);
    assert_eq!(dockerfile.stages[0].steps[1].source_text, "ENV A=1");
}

#[test]
fn continuation_open_at_end_of_file_is_an_error_at_its_start() {
    assert_eq!(
        parse_err("FROM scratch\nRUN a \\\n  b \\\n"),
        "Dockerfile:2: unexpected end of file: the instruction starting on this line ends with a \
         line continuation (\\) but no line follows it"
    );
}

#[test]
fn backtick_escape_directive_for_windows_style_paths() {
    let text = "# escape=`\n\
                FROM scratch\n\
                WORKDIR C:\\app\\bin\n\
                COPY --chown=app `\n\
                \x20    src\\ C:\\dest\\\n\
                ENV MSG=\"say `\"hi`\"\" PRICE=`$5\n";
    let dockerfile = parse_ok(text);
    assert_eq!(dockerfile.escape, '`');
    let expanded: Vec<Instruction> = dockerfile.stages[0]
        .steps
        .iter()
        .map(|step| dockerfile.expand_step(step, &EmptyScope).unwrap())
        .collect();
    assert_eq!(
        expanded,
        vec![
            Instruction::Workdir("C:\\app\\bin".to_owned()),
            Instruction::Copy {
                sources: strings(&["src\\"]),
                dest: "C:\\dest\\".to_owned(),
                chown: Some("app".to_owned()),
                chmod: None,
                from: None,
                heredocs: Vec::new(),
            },
            Instruction::Env(vec![kv("MSG", "say \"hi\""), kv("PRICE", "$5")])
        ]
    );
    assert_eq!(dockerfile.stages[0].steps[1].line, 4);
}

#[test]
fn escape_directive_with_backslash_is_the_default() {
    let dockerfile = parse_ok("# syntax=docker/dockerfile:1\n# escape=\\\nFROM scratch\n");
    assert_eq!(dockerfile.escape, '\\');
    assert_eq!(dockerfile.stages[0].from.line, 3);
}

#[test]
fn invalid_escape_directive_is_an_error() {
    assert_eq!(
        parse_err("# escape=x\nFROM scratch\n"),
        "Dockerfile:1: invalid escape directive: expected \\ or `, found x"
    );
}

#[test]
fn expansion_errors_carry_file_and_line() {
    let dockerfile = parse_ok("FROM scratch\n\nCOPY ${SRC /dst\n");
    assert_eq!(
        dockerfile
            .expand_step(&dockerfile.stages[0].steps[0], &EmptyScope)
            .unwrap_err()
            .to_string(),
        "Dockerfile:3: COPY: cannot expand `${SRC`: missing } to close ${SRC"
    );
    assert_eq!(
        expanded_step("LABEL a=${A:?give_A}", &[]).unwrap_err(),
        "Dockerfile:2: LABEL: cannot expand `${A:?give_A}`: A is required: give_A"
    );
}

#[test]
fn literal_instructions_are_validated_at_parse_time_even_with_quotes() {
    assert_eq!(
        step_err("COPY \"a b\" /dst"),
        "Dockerfile:2: COPY: cannot expand `\"a`: unterminated double quote"
    );
}

// ------------------------------------------------------------ realistic

#[test]
fn realistic_dockerfile_parses_into_the_expected_steps() {
    let text = r#"# syntax=docker/dockerfile:1
# A small service image.
ARG BASE=team/base
ARG BASE_TAG=2024.1

FROM ${BASE}:${BASE_TAG} AS runtime

LABEL org.opencontainers.image.source="https://example.com/app" \
      org.opencontainers.image.licenses=Apache-2.0
ARG VERSION=dev
ENV APP_HOME=/srv/app \
    PATH=/srv/app/bin:$PATH
WORKDIR $APP_HOME
RUN --network=host set -eux; \
    # fetch the toolchain once
    curl -fsSL https://example.com/install.sh | sh; \
    rm -rf /tmp/*
ADD --checksum=sha256:0123456789abcdef0123456789abcdef0123456789abcdef0123456789abcdef \
    https://example.com/tool-1.0.tgz /opt/
COPY --chown=app:app --chmod=0755 bin/ ${APP_HOME}/bin/
USER app
EXPOSE 8080 9090/udp
ENTRYPOINT ["/srv/app/bin/server"]
CMD ["--listen", ":8080"]
"#;
    let dockerfile = parse_ok(text);
    assert_eq!(dockerfile.global_args.len(), 2);
    assert_eq!(dockerfile.stages[0].from.line, 6);
    assert_eq!(
        dockerfile.stages[0].from.stage_name.as_deref(),
        Some("runtime")
    );
    let lines: Vec<(usize, &str)> = dockerfile.stages[0]
        .steps
        .iter()
        .map(|s| (s.line, s.instruction.keyword()))
        .collect();
    assert_eq!(
        lines,
        vec![
            (8, "LABEL"),
            (10, "ARG"),
            (11, "ENV"),
            (13, "WORKDIR"),
            (14, "RUN"),
            (18, "ADD"),
            (20, "COPY"),
            (21, "USER"),
            (22, "EXPOSE"),
            (23, "ENTRYPOINT"),
            (24, "CMD"),
        ]
    );

    let globals = dockerfile.global_scope(&EmptyScope).unwrap();
    assert_eq!(
        dockerfile.base_image(0, &globals).unwrap(),
        BaseImage::Named(ImageRef::parse("team/base:2024.1").unwrap())
    );

    // Walk the steps as the builder would, keeping ENV in scope.
    let mut scope = vars(&[("PATH", "/usr/bin")]);
    let mut expanded = Vec::new();
    for step in &dockerfile.stages[0].steps {
        let instruction = dockerfile.expand_step(step, &scope).unwrap();
        if let Instruction::Env(pairs) = &instruction {
            scope.extend(pairs.iter().map(|p| (p.key.clone(), p.value.clone())));
        }
        expanded.push(instruction);
    }
    assert_eq!(
        expanded[2],
        Instruction::Env(vec![
            kv("APP_HOME", "/srv/app"),
            kv("PATH", "/srv/app/bin:/usr/bin")
        ])
    );
    assert_eq!(expanded[3], Instruction::Workdir("/srv/app".to_owned()));
    assert_eq!(
        expanded[4],
        Instruction::Run {
            command: shell(
                "set -eux;     curl -fsSL https://example.com/install.sh | sh;     rm -rf /tmp/*"
            ),
            network: Network::Host
        }
    );
    assert!(matches!(
        &expanded[5],
        Instruction::Add { sources, checksum: Some(_), .. }
            if sources == &[AddSource::Url("https://example.com/tool-1.0.tgz".to_owned())]
    ));
    assert_eq!(
        expanded[6],
        Instruction::Copy {
            sources: strings(&["bin/"]),
            dest: "/srv/app/bin/".to_owned(),
            chown: Some("app:app".to_owned()),
            chmod: Some(0o755),
            from: None,
            heredocs: Vec::new(),
        }
    );
    assert_eq!(
        expanded[8],
        Instruction::Expose(strings(&["8080/tcp", "9090/udp"]))
    );
    assert_eq!(expanded[10], Instruction::Cmd(exec(&["--listen", ":8080"])));
}

// -------------------------------------------------------------- robustness

/// A small deterministic generator, so the test needs no extra crates.
struct Lcg(u64);

impl Lcg {
    fn next(&mut self) -> u64 {
        self.0 = self
            .0
            .wrapping_mul(6_364_136_223_846_793_005)
            .wrapping_add(1_442_695_040_888_963_407);
        self.0 >> 33
    }
}

#[test]
fn parser_never_panics_on_arbitrary_input() {
    const PIECES: [&str; 32] = [
        "FROM ",
        "RUN ",
        "COPY ",
        "ADD ",
        "ENV ",
        "ARG ",
        "EXPOSE ",
        "LABEL ",
        "CMD ",
        "USER ",
        "\\",
        "`",
        "\n",
        "\r\n",
        " ",
        "#",
        "# escape=`\n",
        "$",
        "${",
        "}",
        ":-",
        "\"",
        "'",
        "[",
        "]",
        ",",
        "=",
        "--chown=",
        "--network=",
        "<<EOF",
        "é",
        "scratch",
    ];
    let mut rng = Lcg(42);
    for _ in 0..3000 {
        let len = (rng.next() % 24) as usize;
        let text: String = (0..len)
            .map(|_| PIECES[(rng.next() % PIECES.len() as u64) as usize])
            .collect();
        if let Ok(dockerfile) = parse("fuzz", &text) {
            let _ = dockerfile.global_scope(&EmptyScope);
            let _ = dockerfile.base_image(0, &EmptyScope);
            for step in &dockerfile.stages[0].steps {
                let _ = dockerfile.expand_step(step, &EmptyScope);
            }
        }
    }
}

#[test]
fn shell_volume_stopsignal_and_maintainer_parse_as_docker_has_them() {
    let df = parse_ok(
        "FROM scratch\nSHELL [\"/bin/ash\", \"-eo\", \"pipefail\", \"-c\"]\n\
         VOLUME [\"/data\", \"/logs\"]\nVOLUME /cache /tmp/x\nSTOPSIGNAL SIGINT\n\
         MAINTAINER Jane Doe <jane@example.com>\n",
    );
    let steps: Vec<&Instruction> = df.stages[0].steps.iter().map(|s| &s.instruction).collect();
    assert_eq!(
        steps,
        [
            &Instruction::Shell(strings(&["/bin/ash", "-eo", "pipefail", "-c"])),
            &Instruction::Volume(strings(&["/data", "/logs"])),
            &Instruction::Volume(strings(&["/cache", "/tmp/x"])),
            &Instruction::StopSignal("SIGINT".into()),
            &Instruction::Maintainer("Jane Doe <jane@example.com>".into()),
        ]
    );
    assert_eq!(
        parse_err("FROM scratch\nSHELL /bin/bash -c\n"),
        "Dockerfile:2: SHELL: expected a JSON array like [\"/bin/bash\", \"-c\"], found `/bin/bash -c`"
    );
    assert_eq!(
        parse_err("FROM scratch\nSHELL []\n"),
        "Dockerfile:2: SHELL: expected a JSON array like [\"/bin/bash\", \"-c\"], found `[]`"
    );
    assert!(parse_err("FROM scratch\nVOLUME\n").contains("VOLUME"));
    assert!(parse_err("FROM scratch\nSTOPSIGNAL 99\n").contains("expected a signal name"));
    assert!(parse_err("FROM scratch\nSTOPSIGNAL kill;rm\n").contains("expected a signal name"));
    // STOPSIGNAL and VOLUME take variables; the values are checked then.
    let df = parse_ok("FROM scratch\nARG SIG=SIGQUIT\nSTOPSIGNAL $SIG\n");
    let scope = vars(&[("SIG", "SIGQUIT")]);
    assert_eq!(
        df.expand_step(&df.stages[0].steps[1], &scope).unwrap(),
        Instruction::StopSignal("SIGQUIT".into())
    );
}

#[test]
fn healthcheck_parses_as_docker_reads_it() {
    assert_eq!(
        only_step(
            "HEALTHCHECK --interval=5m --timeout=3s --start-period=1m30s --start-interval=500ms \
             --retries=4 CMD curl -f http://localhost/ || exit 1"
        ),
        Instruction::Healthcheck(Healthcheck {
            command: Some(shell("curl -f http://localhost/ || exit 1")),
            interval_ns: 300_000_000_000,
            timeout_ns: 3_000_000_000,
            start_period_ns: 90_000_000_000,
            start_interval_ns: 500_000_000,
            retries: 4,
        })
    );
    assert_eq!(
        only_step("healthcheck cmd [\"/bin/check\", \"--quick\"]"),
        Instruction::Healthcheck(Healthcheck {
            command: Some(exec(&["/bin/check", "--quick"])),
            ..Healthcheck::default()
        })
    );
    assert_eq!(
        only_step("HEALTHCHECK NONE"),
        Instruction::Healthcheck(Healthcheck::default())
    );
    // A variable is not expanded: the check's shell sees it.
    assert_eq!(
        expanded_step("HEALTHCHECK CMD test -f $MARKER", &[("MARKER", "/x")]).unwrap(),
        Instruction::Healthcheck(Healthcheck {
            command: Some(shell("test -f $MARKER")),
            ..Healthcheck::default()
        })
    );
    for (step, expect) in [
        ("HEALTHCHECK", "expected `CMD command` or `NONE`"),
        (
            "HEALTHCHECK curl -f http://x/",
            "expected `CMD command` or `NONE`",
        ),
        ("HEALTHCHECK CMD", "expected a command, found nothing"),
        ("HEALTHCHECK CMD []", "empty exec form"),
        ("HEALTHCHECK NONE now", "expected nothing after NONE"),
        ("HEALTHCHECK --retries=2 NONE", "NONE takes no flags"),
        ("HEALTHCHECK --interval=5 CMD true", "expected a duration"),
        ("HEALTHCHECK --interval=-5s CMD true", "expected a duration"),
        ("HEALTHCHECK --interval=5x CMD true", "expected a duration"),
        (
            "HEALTHCHECK --timeout=10us CMD true",
            "must be at least 1ms",
        ),
        ("HEALTHCHECK --retries=0 CMD true", "at least 1"),
        ("HEALTHCHECK --retries=many CMD true", "at least 1"),
        ("HEALTHCHECK --port=80 CMD true", "unknown flag --port"),
        (
            "HEALTHCHECK --interval=99999999999h CMD true",
            "expected a duration",
        ),
    ] {
        let message = step_err(step);
        assert!(message.contains(expect), "{step}: {message}");
    }
}

#[test]
fn syntax_and_check_directives_are_accepted_and_listed_as_ignored() {
    let df = parse_ok("# syntax=docker/dockerfile:1.7\n# check=skip=all\nFROM scratch\n");
    assert_eq!(
        df.ignored_directives,
        ["syntax=docker/dockerfile:1.7", "check=skip=all"]
    );
    // `escape` is applied, not listed; after the first instruction a
    // directive is a comment.
    let df = parse_ok("# escape=`\nFROM scratch\n# syntax=x\n");
    assert!(df.ignored_directives.is_empty());
    assert_eq!(df.escape, '`');
}

#[test]
fn copy_link_is_accepted_and_changes_nothing() {
    assert_eq!(
        only_step("COPY --link a /b"),
        only_step("COPY a /b"),
        "--link is accepted as a no-op"
    );
    assert_eq!(only_step("ADD --link=true a /b"), only_step("ADD a /b"));
    assert!(step_err("COPY --link=yes a /b").contains("--link takes true or false"));
}
