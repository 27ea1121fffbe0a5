//! `strata`: the cache server, the client commands that push, pull and
//! inspect objects in it, the image builder, and the benchmarks. This file
//! only parses flags and dispatches; each command lives in `cmd/`. Every
//! failure ends with one line on stderr saying what failed and why, and a
//! non-zero exit status.

mod cmd;

use std::process::ExitCode;

use anyhow::Result;
use clap::{Parser, Subcommand};
use strata_builder::build::BuildError;
use strata_sandbox::BuildNamespace;

#[derive(Parser)]
#[command(
    name = "strata",
    version,
    about = "Content-addressed build cache and layer store"
)]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// Run the cache server in the foreground.
    Serve(cmd::serve::ServeArgs),
    /// Store a file (or stdin) and print its digest.
    Push(cmd::push::PushArgs),
    /// Write a stored object to a file (or stdout).
    Pull(cmd::pull::PullArgs),
    /// Show the store's figures, or one object's size.
    Stat(cmd::stat::StatArgs),
    /// Collect garbage now: evict least recently used content if the store
    /// is near its cap, free orphaned chunks, compact mostly dead segments.
    Gc(cmd::gc::GcArgs),
    /// Build an OCI image from a Dockerfile, asking the cache before each step.
    Build(Box<cmd::build::BuildArgs>),
    /// Watch a server live: throughput, dedup, step-cache hit rate, GC,
    /// scrub and the busiest clients (`q` quits).
    Top(cmd::top::TopArgs),
    /// Make bearer tokens for `strata serve --tokens`.
    Token(cmd::token::TokenArgs),
    /// Your signing key: `strata key show` prints its public key (others
    /// trust it), `strata key new FILE` makes one for a fleet.
    Key(cmd::signing::KeyArgs),
    /// Whose step results and tags your builds use, besides your own.
    Trust(cmd::signing::TrustCmdArgs),
    /// Measure push, pull, lookups, dedup and settings, each beside a
    /// baseline from the same run (see BENCHMARKS.md).
    Bench(strata_benches::BenchArgs),
}

fn main() -> ExitCode {
    // A sandbox stage must start before any thread does (user namespaces
    // need a single-threaded process): dispatch it before anything else.
    if std::env::args_os()
        .nth(1)
        .is_some_and(|a| a == strata_sandbox::REEXEC_ARG)
    {
        strata_sandbox::reexec_main();
    }
    let cli = Cli::parse();
    // A non-root builder with subordinate ids works on its files as root of
    // a user namespace mapping them, which it must enter while it has one
    // thread (strata-sandbox's userns.rs).
    if matches!(cli.command, Command::Build(_)) {
        match strata_sandbox::enter_build_namespace() {
            Ok(BuildNamespace::Refused(e)) => eprintln!(
                "strata: warning: building without a user namespace of its own ({e}); \
                 files owned by ids other than yours cannot be written"
            ),
            Ok(BuildNamespace::NotNeeded | BuildNamespace::Entered(_)) => {}
            Err(e) => {
                eprintln!("strata: error: entering the build's user namespace: {e}");
                return ExitCode::FAILURE;
            }
        }
    }
    let runtime = match tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
    {
        Ok(r) => r,
        Err(e) => {
            eprintln!("strata: error: starting the async runtime: {e}");
            return ExitCode::FAILURE;
        }
    };
    match runtime.block_on(run(cli)) {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("strata: error: {}", one_line(&e));
            // A failed RUN ends the build with the step's own exit code.
            let code = e
                .downcast_ref::<BuildError>()
                .map_or(1, BuildError::exit_code);
            ExitCode::from(u8::try_from(code).ok().filter(|&c| c != 0).unwrap_or(1))
        }
    }
}

async fn run(cli: Cli) -> Result<()> {
    match cli.command {
        Command::Serve(args) => cmd::serve::run(args).await,
        Command::Push(args) => cmd::push::run(args).await,
        Command::Pull(args) => cmd::pull::run(args).await,
        Command::Stat(args) => cmd::stat::run(args).await,
        Command::Gc(args) => cmd::gc::run(args).await,
        Command::Build(args) => cmd::build::run(*args).await,
        Command::Top(args) => cmd::top::run(args).await,
        Command::Token(args) => cmd::token::run(args),
        Command::Key(args) => cmd::signing::run_key(args),
        Command::Trust(args) => cmd::signing::run_trust(args),
        Command::Bench(args) => strata_benches::run_cli(args).await,
    }
}

/// `context: cause: cause`, without repeating a cause its parent quoted.
fn one_line(e: &anyhow::Error) -> String {
    let mut out = String::new();
    for cause in e.chain() {
        let text = cause.to_string();
        if out.contains(&text) {
            continue;
        }
        if !out.is_empty() {
            out.push_str(": ");
        }
        out.push_str(&text);
    }
    out
}
