//! `health`: one sweep (a table or JSON), or `--watch`: [`fleetnix::health::watch`] printed
//! as it goes (refreshed in place on a terminal; one block, or one JSON line, per sweep
//! otherwise). The probing, tracking and alerting are in `fleetnix::health` and `fleetnix::health::alert`.

use super::table::table;
use super::{runtime, to_json, CliError, CmdResult, Ctx, Outcome};
use fleetnix::health::alert::{Alerter, Ntfy};
use fleetnix::health::{self, HealthReport, NodeState, ProbeOptions, WatchEvent, WatchOptions};
use std::io::{IsTerminal, Write};
use std::ops::ControlFlow;
use std::time::Duration;

/// Arguments of `health`.
#[derive(Debug, clap::Args)]
pub struct HealthArgs {
    /// Refresh continuously (in place on a terminal) and send ntfy alerts on transitions.
    #[arg(long)]
    pub watch: bool,
    /// Time between sweeps with --watch (e.g. 5s, 500ms, 1m).
    #[arg(long, default_value = "5s", value_parser = parse_interval)]
    pub interval: Duration,
    /// With --watch: stop after this many sweeps (default: run until interrupted).
    #[arg(long)]
    pub count: Option<u64>,
    /// JSON output (one report per line with --watch).
    #[arg(long)]
    pub json: bool,
}

fn parse_interval(s: &str) -> Result<Duration, String> {
    let d = humantime::parse_duration(s).map_err(|e| format!("{e} (expected e.g. 5s, 500ms)"))?;
    if d < Duration::from_millis(100) {
        return Err("must be at least 100ms".into());
    }
    Ok(d)
}

/// Colour only on a terminal and never with `NO_COLOR`.
fn use_colour() -> bool {
    std::io::stdout().is_terminal() && std::env::var_os("NO_COLOR").is_none_or(|v| v.is_empty())
}

fn health_lines(r: &HealthReport, colour: bool) -> Vec<String> {
    use owo_colors::OwoColorize;
    let mut rows = vec![vec![
        "NODE".to_string(),
        "STATE".into(),
        "ADDRESS".into(),
        "TAILNET".into(),
        "DETAIL".into(),
    ]];
    let mut states = vec![None];
    for n in &r.nodes {
        let open = n
            .probes
            .iter()
            .filter(|p| p.outcome == health::PortOutcome::Open)
            .count();
        let detail = match &n.reason {
            Some(why) => why.clone(),
            None if n.probes.is_empty() => "no service ports".into(),
            None => format!("{open}/{} service ports open", n.probes.len()),
        };
        rows.push(vec![
            n.name.to_string(),
            n.state.to_string(),
            n.address.to_string(),
            serde_json::to_value(n.presence)
                .ok()
                .and_then(|v| v.as_str().map(str::to_string))
                .unwrap_or_default(),
            detail,
        ]);
        states.push(Some(n.state));
    }
    table(&rows)
        .into_iter()
        .zip(states)
        .map(|(line, st)| match (colour, st) {
            (true, Some(NodeState::Degraded)) => line.red().to_string(),
            (true, Some(NodeState::Down)) => line.red().bold().to_string(),
            _ => line,
        })
        .collect()
}

/// `fleetnix health`: exit 0 when every node is healthy, 1 otherwise, 3 without the
/// tailnet's view; `--watch` exits 0 when it ends.
pub fn run(ctx: &Ctx, a: HealthArgs) -> CmdResult {
    let fleet = ctx.fleet()?;
    let rt = runtime()?;
    if a.watch {
        return rt.block_on(watch(&fleet, &a));
    }
    let report = rt
        .block_on(async {
            let st = health::tailnet_view(None).await?;
            Ok::<_, health::TailnetError>(
                health::sweep(&fleet, Some(&st), &ProbeOptions::for_fleet(&fleet)).await,
            )
        })
        .map_err(CliError::could_not_run)?;
    if a.json {
        println!("{}", to_json(&report, true)?);
    } else {
        for line in health_lines(&report, use_colour()) {
            println!("{line}");
        }
    }
    Ok(Outcome::ok_if(report.all_healthy()))
}

/// Prints a watch's events on stdout (warnings on stderr).
struct Printer<'a> {
    args: &'a HealthArgs,
    tty: bool,
    colour: bool,
    /// A JSON encoding error that stopped the watch.
    failed: Option<CliError>,
}

impl health::WatchSink for Printer<'_> {
    fn event(&mut self, event: WatchEvent<'_>) -> ControlFlow<()> {
        let mut out: Vec<String> = Vec::new();
        match event {
            WatchEvent::AlertFailed { error, pending } => {
                eprintln!("warning: {error}; {pending} alert(s) queued for retry");
                return ControlFlow::Continue(());
            }
            WatchEvent::NoTailnet { at, error } => {
                out.push(format!(
                    "{}  warning: {error}; retrying in {:?}",
                    humantime::format_rfc3339_seconds(at),
                    self.args.interval
                ));
            }
            WatchEvent::Sweep { at, report, .. } => {
                if self.args.json {
                    match to_json(report, false) {
                        Ok(s) => out.push(s),
                        Err(e) => {
                            self.failed = Some(e);
                            return ControlFlow::Break(());
                        }
                    }
                } else {
                    out.push(format!(
                        "fleetnix health  {}  every {}",
                        humantime::format_rfc3339_seconds(at),
                        humantime::format_duration(self.args.interval)
                    ));
                    out.extend(health_lines(report, self.colour));
                }
            }
        }
        let mut text = String::new();
        if self.tty && !self.args.json {
            // Home the cursor and clear the screen: refresh in place.
            text.push_str("\x1b[H\x1b[2J");
        }
        for l in &out {
            text.push_str(l);
            text.push('\n');
        }
        if !self.tty && !self.args.json {
            // Plain output: one block per sweep, separated by a blank line.
            text.push('\n');
        }
        let mut stdout = std::io::stdout().lock();
        match stdout
            .write_all(text.as_bytes())
            .and_then(|()| stdout.flush())
        {
            Ok(()) => ControlFlow::Continue(()),
            // stdout closed (e.g. piped into `head`): stop quietly.
            Err(_) => ControlFlow::Break(()),
        }
    }
}

async fn watch(fleet: &fleetnix::model::Fleet, a: &HealthArgs) -> CmdResult {
    let mut opts = WatchOptions::new(fleet, a.interval);
    opts.count = a.count;
    if fleet.settings.failure.alert_on_node_down {
        let ntfy = Ntfy::for_fleet(fleet, Duration::from_secs(10)).map_err(CliError::msg)?;
        opts.alerter = Some(Alerter::new(ntfy));
    }
    let mut printer = Printer {
        args: a,
        tty: std::io::stdout().is_terminal(),
        colour: use_colour(),
        failed: None,
    };
    let stop = async {
        // No handler: the watch runs until the other branches end it.
        if tokio::signal::ctrl_c().await.is_err() {
            std::future::pending::<()>().await;
        }
    };
    health::watch(fleet, opts, &mut printer, stop).await;
    match printer.failed {
        Some(e) => Err(e),
        None => Ok(Outcome::Ok),
    }
}
