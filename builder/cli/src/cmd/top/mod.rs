//! `strata top`: a live view of a cache server's figures — throughput,
//! dedup ratio, step-lookup hit rate, GC and scrub, the busiest clients
//! and calls — sampled from its `Stats` every interval and redrawn whole
//! each time (ratatui, immediate mode: `view.rs` draws the screen from one
//! view and nothing else). `q`, Esc or Ctrl-C quits and gives the terminal
//! back as it was, also on an error or a panic.
//!
//! When stdout is not a terminal, or with `--once`, it takes two samples
//! one interval apart and prints the view once as plain lines.
//!
//! It needs a server: the embedded store lives only while a command runs,
//! so there is nothing live to watch (and holding it would make every other
//! `strata` command wait); `strata stat` shows its figures.

mod view;

use std::io::{IsTerminal, Write};
use std::time::Duration;

use anyhow::{Context, Result, bail};
use clap::Args;
use ratatui::crossterm::event::{self, Event, KeyCode, KeyEventKind, KeyModifiers};
use strata_client::{Client, ClientConfig};
use strata_proto::v1::StatsResponse;
use tokio::sync::mpsc;
use tokio::time::Instant;

use super::ServerArg;
use view::View;

#[derive(Args)]
pub struct TopArgs {
    /// Seconds between samples (and redraws), at least 0.1.
    #[arg(long, value_name = "SECONDS", default_value_t = 1.0,
          value_parser = parse_interval)]
    interval: f64,
    /// Print one view as plain lines (two samples an interval apart) and
    /// exit, as happens anyway when stdout is not a terminal.
    #[arg(long)]
    once: bool,
    #[command(flatten)]
    server: ServerArg,
}

fn parse_interval(text: &str) -> Result<f64, String> {
    match text.trim().parse::<f64>() {
        Ok(s) if s.is_finite() && (0.1..=3600.0).contains(&s) => Ok(s),
        _ => Err(format!(
            "{text:?} is not an interval (seconds, from 0.1 to 3600, e.g. 1 or 0.5)"
        )),
    }
}

pub async fn run(args: TopArgs) -> Result<()> {
    let Some(url) = args.server.server.clone() else {
        bail!(
            "strata top watches a running server: name it with --server URL or STRATA_SERVER \
             (the embedded store lives only while a command runs; `strata stat` shows its figures)"
        );
    };
    let config = args.server.connection(ClientConfig::default())?;
    let client = Client::connect(&url, config)
        .await
        .with_context(|| format!("cannot reach {url}"))?;
    let interval = Duration::from_secs_f64(args.interval);
    if args.once || !std::io::stdout().is_terminal() {
        return print_once(&client, &url, interval).await;
    }
    // Fail before taking over the terminal if the server will not answer
    // (a token without the admin scope, say).
    let first = sample(&client).await?;
    let mut terminal = ratatui::init();
    let result = watch(&mut terminal, &client, &url, interval, first).await;
    ratatui::restore();
    result
}

async fn sample(client: &Client) -> Result<StatsResponse> {
    client
        .stats()
        .await
        .context("reading the server's figures (Stats, which needs the admin scope)")
}

async fn print_once(client: &Client, url: &str, interval: Duration) -> Result<()> {
    let earlier = sample(client).await?;
    let started = Instant::now();
    tokio::time::sleep(interval).await;
    let latest = sample(client).await?;
    let view = View::new(url, Some(&earlier), &latest, started.elapsed());
    let mut out = std::io::stdout().lock();
    out.write_all(view.plain().as_bytes())?;
    out.flush()?;
    Ok(())
}

/// What the key reader tells the drawing loop.
enum Input {
    Quit,
    Redraw,
}

/// Reads keys on a thread of its own (crossterm's reads block) until the
/// receiver is gone.
fn read_keys(tx: mpsc::Sender<Input>) {
    loop {
        if tx.is_closed() {
            return;
        }
        match event::poll(Duration::from_millis(100)) {
            Ok(false) => continue,
            Ok(true) => {}
            Err(_) => return,
        }
        let input = match event::read() {
            Ok(Event::Key(key)) if key.kind != KeyEventKind::Release => match key.code {
                KeyCode::Char('q') | KeyCode::Esc => Input::Quit,
                KeyCode::Char('c') if key.modifiers.contains(KeyModifiers::CONTROL) => Input::Quit,
                _ => continue,
            },
            Ok(Event::Resize(..)) => Input::Redraw,
            Ok(_) => continue,
            Err(_) => Input::Quit,
        };
        if tx.blocking_send(input).is_err() {
            return;
        }
    }
}

async fn watch(
    terminal: &mut ratatui::DefaultTerminal,
    client: &Client,
    url: &str,
    interval: Duration,
    first: StatsResponse,
) -> Result<()> {
    let (tx, mut keys) = mpsc::channel(8);
    std::thread::spawn(move || read_keys(tx));
    let mut latest = (first, Instant::now());
    let mut view = View::new(url, None, &latest.0, Duration::ZERO);
    let mut next = Instant::now() + interval;
    loop {
        terminal
            .draw(|frame| view::render(frame, &view))
            .context("drawing the terminal")?;
        tokio::select! {
            input = keys.recv() => match input {
                Some(Input::Quit) | None => return Ok(()),
                Some(Input::Redraw) => continue,
            },
            () = tokio::time::sleep_until(next) => {}
        }
        next = Instant::now() + interval;
        match sample(client).await {
            Ok(stats) => {
                let now = Instant::now();
                let (before, at) = std::mem::replace(&mut latest, (stats, now));
                view = View::new(url, Some(&before), &latest.0, now - at);
            }
            Err(e) => {
                // Keep the last figures on screen and say why they are old.
                view.problem = Some(format!("{e:#}; retrying"));
            }
        }
    }
}
