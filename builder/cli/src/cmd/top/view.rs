//! What `strata top` shows, as a pure function of two samples of the
//! server's `Stats`: [`View::new`] turns them into figures (rates from
//! the difference between the samples, ratios from the latest), and
//! [`render`] draws a view into a ratatui frame — the whole screen, every
//! frame, from the view alone (immediate mode). [`View::plain`] writes the
//! same figures as plain lines, for a pipe or `--once`. Nothing here does
//! I/O or keeps state, so each can be tested on made-up samples.

use std::time::Duration;

use ratatui::Frame;
use ratatui::layout::{Constraint, Layout};
use ratatui::style::{Modifier, Style};
use ratatui::text::Line;
use ratatui::widgets::{Block, Paragraph, Row, Table};
use strata_client::human_bytes;
use strata_proto::v1::StatsResponse;

/// Clients shown by name (the server sends at most ten, and "other").
const CLIENT_ROWS: usize = 10;

/// RPCs shown: the busiest over the interval.
const RPC_ROWS: usize = 8;

/// One client's line.
#[derive(Clone, Debug, PartialEq)]
pub struct ClientRow {
    pub client: String,
    pub calls: u64,
    /// Bytes per second received from it and sent to it, over the interval.
    pub in_rate: f64,
    pub out_rate: f64,
    /// Totals since the server started.
    pub received: u64,
    pub sent: u64,
}

/// One RPC's line, over the interval.
#[derive(Clone, Debug, PartialEq)]
pub struct RpcRow {
    pub rpc: String,
    pub calls: u64,
    pub errors: u64,
    /// Mean duration of the calls that finished in the interval.
    pub mean: Option<Duration>,
}

/// Everything on screen.
#[derive(Clone, Debug, PartialEq)]
pub struct View {
    pub server: String,
    pub uptime: Duration,
    /// What the rates are over: the time between the two samples, or,
    /// with one sample, the server's uptime.
    pub interval: Duration,
    pub in_rate: f64,
    pub out_rate: f64,
    pub calls_rate: f64,
    /// (label, value) lines of figures, in order.
    pub figures: Vec<(&'static str, String)>,
    pub clients: Vec<ClientRow>,
    pub rpcs: Vec<RpcRow>,
    /// Why the latest sample could not be taken (the view then shows the
    /// last good one).
    pub problem: Option<String>,
}

/// `n / d`, or `None` when nothing was counted.
fn share(n: u64, d: u64) -> Option<f64> {
    (d > 0).then(|| n as f64 / d as f64)
}

fn percent(n: u64, d: u64) -> String {
    share(n, d).map_or_else(|| "-".to_owned(), |s| format!("{:.1}%", s * 100.0))
}

fn rate(bytes: f64) -> String {
    format!("{}/s", human_bytes(bytes.max(0.0) as u64))
}

/// `2h 03m`, `4m 05s`, `12s`.
pub fn duration(d: Duration) -> String {
    let s = d.as_secs();
    match s {
        0..60 => format!("{s}s"),
        60..3600 => format!("{}m {:02}s", s / 60, s % 60),
        _ => format!("{}h {:02}m", s / 3600, (s % 3600) / 60),
    }
}

impl View {
    /// The view of `latest`, with rates over the time since `earlier`
    /// (taken `elapsed` before it) or, without one, since the server
    /// started.
    pub fn new(
        server: &str,
        earlier: Option<&StatsResponse>,
        latest: &StatsResponse,
        elapsed: Duration,
    ) -> View {
        let zero = StatsResponse::default();
        // A restart in between resets the counters: rates then start over.
        let earlier = earlier.filter(|e| e.uptime_ms <= latest.uptime_ms);
        let (base, interval) = match earlier {
            Some(e) => (e, elapsed),
            None => (&zero, Duration::from_millis(latest.uptime_ms)),
        };
        let secs = interval.as_secs_f64().max(1e-3);
        let per_sec = |now: u64, then: u64| now.saturating_sub(then) as f64 / secs;
        let calls = |s: &StatsResponse| s.rpcs.iter().map(|r| r.calls).sum::<u64>();
        let s = latest;
        let dedup = share(s.logical_bytes, s.chunk_bytes).unwrap_or(1.0);
        let compression = share(s.chunk_bytes, s.stored_bytes).unwrap_or(1.0);
        let cap = if s.max_bytes == 0 {
            "no cap".to_owned()
        } else {
            format!("cap {}", human_bytes(s.max_bytes))
        };
        let lookups = s.step_lookups.saturating_sub(base.step_lookups);
        let hits = s.step_hits.saturating_sub(base.step_hits);
        let figures = vec![
            (
                "store",
                format!(
                    "{} objects, {} chunks; {} logical, {} unique, {} stored",
                    s.manifests,
                    s.chunks,
                    human_bytes(s.logical_bytes),
                    human_bytes(s.chunk_bytes),
                    human_bytes(s.stored_bytes)
                ),
            ),
            (
                "dedup ratio",
                format!("{dedup:.2}x (compression {compression:.2}x)"),
            ),
            (
                "disk",
                format!("{} used of {cap}", human_bytes(s.bytes_used)),
            ),
            (
                "uploads",
                format!(
                    "{} chunks received ({}), {} new stored ({}), {} deduplicated ({}) since start",
                    s.upload_chunks_received,
                    human_bytes(s.upload_bytes_received),
                    s.upload_chunks_stored,
                    human_bytes(s.upload_bytes_stored),
                    s.dedup_chunks,
                    human_bytes(s.dedup_bytes)
                ),
            ),
            (
                "step lookups",
                format!(
                    "hit rate {} now ({hits} of {lookups}); {} since start ({} hits, {} misses of {})",
                    percent(hits, lookups),
                    percent(s.step_hits, s.step_lookups),
                    s.step_hits,
                    s.step_misses,
                    s.step_lookups
                ),
            ),
            (
                "gc",
                format!(
                    "{} rounds: {} objects, {} step results, {} tags evicted, {} chunks freed, {} compacted",
                    s.gc_rounds,
                    s.objects_evicted,
                    s.step_results_evicted,
                    s.tags_evicted,
                    s.chunks_freed,
                    human_bytes(s.bytes_compacted)
                ),
            ),
            (
                "scrub",
                format!(
                    "{} passes, {} chunks checked ({}), {} rotten found; last pass {}",
                    s.scrub_passes,
                    s.scrub_chunks_checked,
                    human_bytes(s.scrub_bytes_read),
                    s.scrub_rotten_found,
                    if s.scrub_passes == 0 {
                        "-".to_owned()
                    } else {
                        duration(Duration::from_millis(s.scrub_last_pass_ms))
                    }
                ),
            ),
            (
                "health",
                format!(
                    "{} rotten chunks, {} manifests unverified, {} refuted",
                    s.rotten_chunks, s.manifests_unverified, s.manifests_refuted
                ),
            ),
        ];
        View {
            server: server.to_owned(),
            uptime: Duration::from_millis(s.uptime_ms),
            interval,
            in_rate: per_sec(s.request_bytes, base.request_bytes),
            out_rate: per_sec(s.response_bytes, base.response_bytes),
            calls_rate: per_sec(calls(s), calls(base)),
            figures,
            clients: client_rows(base, s, secs),
            rpcs: rpc_rows(base, s),
            problem: None,
        }
    }

    /// The header line: where, how long up, and the throughput.
    pub fn headline(&self) -> String {
        format!(
            "{} up {} | in {} out {} | {:.1} calls/s (over {:.1} s)",
            self.server,
            duration(self.uptime),
            rate(self.in_rate),
            rate(self.out_rate),
            self.calls_rate,
            self.interval.as_secs_f64()
        )
    }

    /// The view as plain lines.
    pub fn plain(&self) -> String {
        let mut out = format!("{}\n", self.headline());
        if let Some(problem) = &self.problem {
            out.push_str(&format!("problem       {problem}\n"));
        }
        for (label, value) in &self.figures {
            out.push_str(&format!("{label:<14}{value}\n"));
        }
        out.push_str(&format!(
            "\n{:<24} {:>8} {:>12} {:>12} {:>12} {:>12}\n",
            "busiest clients", "calls", "in", "out", "received", "sent"
        ));
        for c in &self.clients {
            out.push_str(&format!(
                "{:<24} {:>8} {:>12} {:>12} {:>12} {:>12}\n",
                c.client,
                c.calls,
                rate(c.in_rate),
                rate(c.out_rate),
                human_bytes(c.received),
                human_bytes(c.sent)
            ));
        }
        out.push_str(&format!(
            "\n{:<40} {:>8} {:>8} {:>10}\n",
            "rpc (over the interval)", "calls", "errors", "mean"
        ));
        for r in &self.rpcs {
            out.push_str(&format!(
                "{:<40} {:>8} {:>8} {:>10}\n",
                r.rpc,
                r.calls,
                r.errors,
                mean(r.mean)
            ));
        }
        out
    }
}

fn mean(d: Option<Duration>) -> String {
    d.map_or_else(
        || "-".to_owned(),
        |d| format!("{:.1} ms", d.as_secs_f64() * 1e3),
    )
}

/// Clients busiest first, with rates over the interval; "other" last.
fn client_rows(base: &StatsResponse, latest: &StatsResponse, secs: f64) -> Vec<ClientRow> {
    let mut rows: Vec<ClientRow> = latest
        .clients
        .iter()
        .map(|c| {
            let before = base.clients.iter().find(|b| b.client == c.client);
            let since = |now: u64, then: Option<u64>| now.saturating_sub(then.unwrap_or(0));
            ClientRow {
                client: c.client.clone(),
                calls: c.calls,
                in_rate: since(c.bytes_received, before.map(|b| b.bytes_received)) as f64 / secs,
                out_rate: since(c.bytes_sent, before.map(|b| b.bytes_sent)) as f64 / secs,
                received: c.bytes_received,
                sent: c.bytes_sent,
            }
        })
        .filter(|c| c.client != "other" || c.calls > 0)
        .collect();
    // Busiest now first; the server's order (busiest overall) breaks ties.
    rows.sort_by(|a, b| {
        let now = |c: &ClientRow| c.in_rate + c.out_rate;
        (a.client == "other")
            .cmp(&(b.client == "other"))
            .then(now(b).total_cmp(&now(a)))
    });
    rows.truncate(CLIENT_ROWS + 1);
    rows
}

/// The RPCs with calls in the interval, most calls first.
fn rpc_rows(base: &StatsResponse, latest: &StatsResponse) -> Vec<RpcRow> {
    let mut rows: Vec<RpcRow> = latest
        .rpcs
        .iter()
        .filter_map(|r| {
            let before = base.rpcs.iter().find(|b| b.rpc == r.rpc);
            let calls = r.calls.saturating_sub(before.map_or(0, |b| b.calls));
            let errors = r.errors.saturating_sub(before.map_or(0, |b| b.errors));
            let micros = r
                .total_micros
                .saturating_sub(before.map_or(0, |b| b.total_micros));
            (calls > 0).then(|| RpcRow {
                // "/strata.v1.ContentStore/PutChunks" reads as "ContentStore/PutChunks".
                rpc: r
                    .rpc
                    .trim_start_matches('/')
                    .trim_start_matches("strata.v1.")
                    .to_owned(),
                calls,
                errors,
                mean: Some(Duration::from_micros(micros / calls)),
            })
        })
        .collect();
    rows.sort_by(|a, b| b.calls.cmp(&a.calls).then(a.rpc.cmp(&b.rpc)));
    rows.truncate(RPC_ROWS);
    rows
}

/// Draws `view` over the whole frame.
pub fn render(frame: &mut Frame, view: &View) {
    let figure_lines = view.figures.len() as u16 + u16::from(view.problem.is_some());
    let [head, figures, clients, rpcs, keys] = Layout::vertical([
        Constraint::Length(1),
        Constraint::Length(figure_lines + 2),
        Constraint::Min(4),
        Constraint::Length(RPC_ROWS as u16 + 3),
        Constraint::Length(1),
    ])
    .areas(frame.area());
    let bold = Style::default().add_modifier(Modifier::BOLD);
    frame.render_widget(Paragraph::new(view.headline()).style(bold), head);

    let mut lines: Vec<Line> = Vec::new();
    if let Some(problem) = &view.problem {
        lines.push(Line::styled(
            format!("{:<14}{problem}", "problem"),
            Style::default().add_modifier(Modifier::REVERSED),
        ));
    }
    lines.extend(
        view.figures
            .iter()
            .map(|(label, value)| Line::from(format!("{label:<14}{value}"))),
    );
    frame.render_widget(
        Paragraph::new(lines).block(Block::bordered().title(" figures ")),
        figures,
    );

    let rows = view.clients.iter().map(|c| {
        Row::new([
            c.client.clone(),
            c.calls.to_string(),
            rate(c.in_rate),
            rate(c.out_rate),
            human_bytes(c.received),
            human_bytes(c.sent),
        ])
    });
    let table = Table::new(
        rows,
        [
            Constraint::Min(20),
            Constraint::Length(9),
            Constraint::Length(13),
            Constraint::Length(13),
            Constraint::Length(11),
            Constraint::Length(11),
        ],
    )
    .header(Row::new(["client", "calls", "in", "out", "received", "sent"]).style(bold))
    .block(Block::bordered().title(" busiest clients "));
    frame.render_widget(table, clients);

    let rows = view.rpcs.iter().map(|r| {
        Row::new([
            r.rpc.clone(),
            r.calls.to_string(),
            r.errors.to_string(),
            mean(r.mean),
        ])
    });
    let table = Table::new(
        rows,
        [
            Constraint::Min(30),
            Constraint::Length(9),
            Constraint::Length(8),
            Constraint::Length(11),
        ],
    )
    .header(Row::new(["rpc", "calls", "errors", "mean"]).style(bold))
    .block(Block::bordered().title(" calls over the interval "));
    frame.render_widget(table, rpcs);
    frame.render_widget(Paragraph::new("q quits"), keys);
}

#[cfg(test)]
mod tests {
    use ratatui::Terminal;
    use ratatui::backend::TestBackend;
    use strata_proto::v1::{ClientFigures, RpcFigures};

    use super::*;

    fn sample(uptime_s: u64, received: u64, lookups: u64, hits: u64) -> StatsResponse {
        StatsResponse {
            uptime_ms: uptime_s * 1000,
            manifests: 3,
            chunks: 40,
            logical_bytes: 30 << 20,
            chunk_bytes: 10 << 20,
            stored_bytes: 5 << 20,
            request_bytes: received,
            response_bytes: received / 2,
            step_lookups: lookups,
            step_hits: hits,
            step_misses: lookups - hits,
            gc_rounds: 2,
            scrub_passes: 1,
            scrub_last_pass_ms: 65_000,
            rpcs: vec![RpcFigures {
                rpc: "/strata.v1.StepCache/LookupSteps".into(),
                calls: lookups,
                errors: 0,
                total_micros: lookups * 2000,
            }],
            clients: vec![
                ClientFigures {
                    client: "token:ci".into(),
                    calls: lookups,
                    bytes_received: received,
                    bytes_sent: received / 2,
                },
                ClientFigures {
                    client: "other".into(),
                    ..ClientFigures::default()
                },
            ],
            ..StatsResponse::default()
        }
    }

    #[test]
    fn rates_come_from_the_difference_between_samples() {
        let earlier = sample(10, 1 << 20, 10, 5);
        let latest = sample(12, 5 << 20, 20, 14);
        let view = View::new(
            "http://cache:7171",
            Some(&earlier),
            &latest,
            Duration::from_secs(2),
        );
        assert_eq!(view.in_rate, (2 << 20) as f64);
        assert_eq!(view.out_rate, (1 << 20) as f64);
        assert_eq!(view.calls_rate, 5.0);
        let steps = &view
            .figures
            .iter()
            .find(|f| f.0 == "step lookups")
            .unwrap()
            .1;
        assert!(
            steps.starts_with("hit rate 90.0% now (9 of 10); 70.0% since start"),
            "{steps}"
        );
        assert_eq!(view.clients.len(), 1, "an empty other bucket is not shown");
        assert_eq!(view.clients[0].in_rate, (2 << 20) as f64);
        assert_eq!(view.rpcs[0].calls, 10);
        assert_eq!(view.rpcs[0].mean, Some(Duration::from_millis(2)));
    }

    #[test]
    fn without_an_earlier_sample_or_after_a_restart_rates_are_since_start() {
        let latest = sample(4, 4 << 20, 8, 2);
        let first = View::new("s", None, &latest, Duration::from_secs(1));
        assert_eq!(first.interval, Duration::from_secs(4));
        assert_eq!(first.in_rate, (1 << 20) as f64);
        let before_restart = sample(100, 100 << 20, 100, 50);
        let after = View::new("s", Some(&before_restart), &latest, Duration::from_secs(1));
        assert_eq!(after, first);
    }

    #[test]
    fn the_screen_shows_throughput_hit_rate_dedup_and_the_busiest_clients() {
        let earlier = sample(10, 1 << 20, 10, 5);
        let latest = sample(12, 5 << 20, 20, 14);
        let view = View::new(
            "http://cache:7171",
            Some(&earlier),
            &latest,
            Duration::from_secs(2),
        );
        let mut terminal = Terminal::new(TestBackend::new(120, 40)).unwrap();
        terminal.draw(|f| render(f, &view)).unwrap();
        let screen: String = terminal
            .backend()
            .buffer()
            .content()
            .chunks(120)
            .map(|row| row.iter().map(|c| c.symbol()).collect::<String>() + "\n")
            .collect();
        for expected in [
            "http://cache:7171 up 12s | in 2.0 MiB/s out 1.0 MiB/s | 5.0 calls/s",
            "dedup ratio   3.00x (compression 2.00x)",
            "hit rate 90.0% now",
            "busiest clients",
            "token:ci",
            "StepCache/LookupSteps",
            "2.0 ms",
            "last pass 1m 05s",
            "q quits",
        ] {
            assert!(
                screen.contains(expected),
                "{expected:?} is not on screen:\n{screen}"
            );
        }
    }

    #[test]
    fn a_tiny_terminal_is_drawn_without_panicking() {
        let view = View::new("s", None, &sample(1, 0, 0, 0), Duration::from_secs(1));
        for (w, h) in [(1, 1), (10, 3), (40, 8)] {
            let mut terminal = Terminal::new(TestBackend::new(w, h)).unwrap();
            terminal.draw(|f| render(f, &view)).unwrap();
        }
    }

    #[test]
    fn plain_output_has_the_same_figures() {
        let view = View::new("s", None, &sample(2, 2 << 20, 4, 3), Duration::from_secs(1));
        let text = view.plain();
        assert!(text.contains("in 1.0 MiB/s"), "{text}");
        assert!(
            text.contains("75.0% since start (3 hits, 1 misses of 4)"),
            "{text}"
        );
        assert!(text.contains("token:ci"), "{text}");
    }
}
