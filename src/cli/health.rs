//! `health`: one sweep (a table or JSON), or `--watch`: [`fleetnix::health::watch`] printed
//! as it goes (refreshed in place on a terminal; one block, or one JSON line, per sweep
//! otherwise). The probing, tracking and alerting are in `fleetnix::health` and `fleetnix::health::alert`.
//!
//! Next to the probes: the router's view of each node (`fleet-health`, read from the bus as
//! `_observer` by [`BusView`]), best effort and bounded by the node timeout; `--no-bus` skips it.

use super::bus::{service_password, url, Conn};
use super::table::table;
use super::{runtime, to_json, CliError, CmdResult, Ctx, Outcome};
use fleetnix::bus::router::HealthEntry;
use fleetnix::bus::users::Service;
use fleetnix::bus::{dispatch as d, drain};
use fleetnix::health::alert::{Alerter, Ntfy};
use fleetnix::health::router::{read_bounded, RouterRead, BACKSTOP};
use fleetnix::health::{
    self, HealthReport, NodeState, ProbeOptions, RouterEntry, RouterSource, RouterStatus,
    WatchEvent, WatchOptions,
};
use fleetnix::model::{Fleet, NodeName};
use fleetnix::secret::Secret;
use std::io::{IsTerminal, Write};
use std::ops::ControlFlow;
use std::time::{Duration, SystemTime};

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
    /// Probes only: do not read the router's view (heartbeats, in-flight tasks, draining) from NATS.
    #[arg(long)]
    pub no_bus: bool,
    /// Connection to NATS for the router's view, as `_observer` (its password:
    /// secrets/<control plane>/nats-observer-password.age).
    #[command(flatten)]
    pub conn: Conn,
}

/// Reads the router's `fleet-health` entries from NATS as `_observer`: connects on the first
/// read (and again after a failed connect), then re-reads on the same connection (async-nats
/// reconnects it on its own).
struct BusView {
    url: String,
    password: Secret,
    timeout: Duration,
    js: Option<async_nats::jetstream::Context>,
}

impl BusView {
    /// Connects if need be and reads every entry, all within one node timeout.
    async fn read_entries(&mut self) -> Result<Vec<RouterEntry>, String> {
        let started = tokio::time::Instant::now();
        let js = match &self.js {
            Some(js) => js.clone(),
            None => {
                // Bounded by the timeout, handshake included.
                let user = Service::Observer.user();
                let client = d::connect_as(&self.url, user, &self.password, self.timeout)
                    .await
                    .map_err(|e| e.to_string())?;
                let js = async_nats::jetstream::new(client);
                self.js = Some(js.clone());
                js
            }
        };
        let left = self.timeout.saturating_sub(started.elapsed());
        let all = drain::health_all(&js, left.max(Duration::from_millis(100)))
            .await
            .map_err(|e| e.to_string())?;
        Ok(all.entries.iter().filter_map(router_entry).collect())
    }
}

impl RouterSource for BusView {
    fn read(&mut self) -> RouterRead<'_> {
        Box::pin(self.read_entries())
    }
}

/// A `fleet-health` entry as `health` shows it; `None` for a record it cannot place (a key that
/// is no node name, a state it does not know).
fn router_entry(e: &HealthEntry) -> Option<RouterEntry> {
    Some(RouterEntry {
        node: NodeName::parse(&e.node).ok()?,
        state: e.state.parse().ok()?,
        reason: e.reason.clone(),
        since: e.since.clone(),
        last_heartbeat: e.last_heartbeat.clone(),
        in_flight: e.in_flight,
        capacity: e.capacity,
        draining: e.draining,
    })
}

/// The bus reader for `health` (`Err`: why the router's view will be missing, e.g. no password).
fn bus_view(ctx: &Ctx, fleet: &Fleet, a: &HealthArgs) -> Result<BusView, String> {
    // Least privilege: `_observer` reads fleet-health and nothing else (it cannot drain a node,
    // register one or touch a task); the router's user writes it.
    let pw = service_password(ctx, fleet, &a.conn, Service::Observer).map_err(|e| e.to_string())?;
    Ok(BusView {
        url: url(fleet, &a.conn),
        password: pw,
        timeout: Duration::from_secs(u64::from(fleet.settings.failure.node_timeout_seconds)),
        js: None,
    })
}

/// The router's view for one sweep: `None` with `--no-bus`.
async fn read_view(
    source: Option<&mut Result<BusView, String>>,
    limit: Duration,
) -> Option<Result<Vec<RouterEntry>, String>> {
    Some(match source? {
        // A backstop: the reader bounds itself by `limit` and says what it was doing.
        Ok(b) => read_bounded(b, limit + BACKSTOP).await,
        Err(why) => Err(why.clone()),
    })
}

/// The line that says why the router's view is missing, if it is.
fn missing_note(r: &HealthReport) -> Option<String> {
    match &r.router_view {
        RouterStatus::Missing(why) => Some(format!(
            "note: the router's view is missing (probes only): {why}"
        )),
        RouterStatus::Read | RouterStatus::NotAsked => None,
    }
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

/// The table: one row per node; with the router's view, its heartbeat age, in-flight/capacity
/// and draining, and its state in DETAIL where it differs from the probes'.
fn health_lines(r: &HealthReport, colour: bool) -> Vec<String> {
    use owo_colors::OwoColorize;
    let with_router = r.router_view == RouterStatus::Read;
    let mut header = vec![
        "NODE".to_string(),
        "STATE".into(),
        "ADDRESS".into(),
        "TAILNET".into(),
    ];
    if with_router {
        header.extend(["HEARTBEAT".into(), "TASKS".into(), "DRAINING".into()]);
    }
    header.push("DETAIL".into());
    let mut rows = vec![header];
    let mut states = vec![None];
    for n in &r.nodes {
        let open = n
            .probes
            .iter()
            .filter(|p| p.outcome == health::PortOutcome::Open)
            .count();
        let mut detail = match &n.reason {
            Some(why) => why.clone(),
            None if n.probes.is_empty() => "no service ports".into(),
            None => format!("{open}/{} service ports open", n.probes.len()),
        };
        let mut row = vec![
            n.name.to_string(),
            n.state.to_string(),
            n.address.to_string(),
            serde_json::to_value(n.presence)
                .ok()
                .and_then(|v| v.as_str().map(str::to_string))
                .unwrap_or_default(),
        ];
        if with_router {
            match &n.router {
                Some(v) => {
                    row.extend([
                        v.heartbeat_text(),
                        v.load_text(),
                        v.draining_text().to_string(),
                    ]);
                    if let Some(d) = v.disagreement(n.state) {
                        detail = format!("{detail}; {d}");
                    }
                }
                None => {
                    row.extend(["—".to_string(), "—".into(), "—".into()]);
                    detail = format!("{detail}; router: no entry");
                }
            }
        }
        row.push(detail);
        rows.push(row);
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
    let mut source = (!a.no_bus).then(|| bus_view(ctx, &fleet, &a));
    let rt = runtime()?;
    if a.watch {
        return rt.block_on(watch(&fleet, &a, source));
    }
    let opts = ProbeOptions::for_fleet(&fleet);
    let report = rt
        .block_on(async {
            let st = health::tailnet_view(None).await?;
            // The router's view is read while the probes run, bounded like one of them (and
            // only with the tailnet's view: without it, health reports nothing at all).
            let (mut report, view) = tokio::join!(
                health::sweep(&fleet, Some(&st), &opts),
                read_view(source.as_mut(), opts.timeout)
            );
            if let Some(view) = view {
                report.attach_router(view.as_deref().map_err(String::as_str), SystemTime::now());
            }
            Ok::<_, health::TailnetError>(report)
        })
        .map_err(CliError::could_not_run)?;
    if let Some(note) = missing_note(&report) {
        eprintln!("{note}");
    }
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
                    out.extend(missing_note(report));
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

/// A source that only ever says why the router's view is missing.
struct Missing(String);

impl RouterSource for Missing {
    fn read(&mut self) -> RouterRead<'_> {
        let why = self.0.clone();
        Box::pin(async move { Err(why) })
    }
}

async fn watch(
    fleet: &Fleet,
    a: &HealthArgs,
    source: Option<Result<BusView, String>>,
) -> CmdResult {
    let mut opts = WatchOptions::new(fleet, a.interval);
    opts.count = a.count;
    opts.router = source.map(|s| -> Box<dyn RouterSource> {
        match s {
            Ok(b) => Box::new(b),
            Err(why) => Box::new(Missing(why)),
        }
    });
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
