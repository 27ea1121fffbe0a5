//! `strata token new`: a new bearer token for `strata serve --tokens FILE`.
//! The token is printed once; the file keeps only its hash.

use std::path::PathBuf;

use anyhow::{Context, Result};
use clap::{Args, Subcommand};
use strata_server::Scopes;

#[derive(Args)]
pub struct TokenArgs {
    #[command(subcommand)]
    command: TokenCommand,
}

#[derive(Subcommand)]
enum TokenCommand {
    /// Make a token, print it once, and append its hash, name and scopes
    /// to the token file (created 0600 if missing).
    New(NewArgs),
}

#[derive(Args)]
struct NewArgs {
    /// A name for the token, shown in the server's log and errors
    /// (letters, digits, `.`, `_`, `-`).
    name: String,
    /// What the token may do, comma-separated: read, cas-write (chunks and
    /// manifests), result-write (step results and tags: what other builds
    /// will use), admin (stats, rebuild, scrub).
    #[arg(long, value_name = "SCOPES", value_parser = parse_scopes)]
    scope: Scopes,
    /// The token file the server reads (`strata serve --tokens FILE`).
    #[arg(long, value_name = "FILE")]
    tokens: PathBuf,
}

fn parse_scopes(text: &str) -> Result<Scopes, String> {
    text.parse()
}

pub fn run(args: TokenArgs) -> Result<()> {
    match args.command {
        TokenCommand::New(new) => {
            let token = strata_server::add_token(&new.tokens, &new.name, new.scope)
                .context("cannot make a token")?;
            println!("{token}");
            eprintln!(
                "strata: token {:?} ({}) added to {}; this is the only time it is shown",
                new.name,
                new.scope,
                new.tokens.display()
            );
            Ok(())
        }
    }
}
