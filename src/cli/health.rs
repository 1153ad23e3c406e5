//! `status`, `health`, `route`.

use super::{runtime, Ctx};
use fleetnix::alert::{Alerter, Ntfy};
use fleetnix::health::{self, HealthReport, NodeState, ProbeOptions, StateTracker};
use fleetnix::model::{Fleet, Node};
use fleetnix::route::Router;
use fleetnix::status::{self, StatusReport};
use fleetnix::tailscale::{Tailscale, TailscaleStatus};
use std::io::{IsTerminal, Write};
use std::process::ExitCode;
use std::time::{Duration, Instant};

/// Arguments of `status`.
#[derive(Debug, clap::Args)]
pub struct StatusArgs {
    /// JSON output.
    #[arg(long)]
    pub json: bool,
}

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

/// Arguments of `route`.
#[derive(Debug, clap::Args)]
pub struct RouteArgs {
    /// The role.
    pub role: String,
    /// JSON output.
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

async fn tailnet_status() -> Result<TailscaleStatus, String> {
    let ts = Tailscale::locate().map_err(|e| e.to_string())?;
    let st = ts.status().await.map_err(|e| e.to_string())?;
    if !st.is_running() {
        return Err(format!(
            "tailscale is not running here (backend state {:?})",
            st.backend_state
        ));
    }
    Ok(st)
}

fn json_line<T: serde::Serialize>(v: &T, pretty: bool) -> Result<String, ExitCode> {
    let r = if pretty {
        serde_json::to_string_pretty(v)
    } else {
        serde_json::to_string(v)
    };
    r.map_err(|e| {
        eprintln!("error: cannot encode JSON: {e}");
        ExitCode::from(1)
    })
}

/// Columns padded to the widest cell, two spaces apart, like `tailscale status`.
fn table(rows: &[Vec<String>]) -> Vec<String> {
    let cols = rows.iter().map(Vec::len).max().unwrap_or(0);
    let widths: Vec<usize> = (0..cols)
        .map(|c| {
            rows.iter()
                .map(|r| r.get(c).map_or(0, |s| s.chars().count()))
                .max()
                .unwrap_or(0)
        })
        .collect();
    rows.iter()
        .map(|r| {
            let mut line = String::new();
            for (c, cell) in r.iter().enumerate() {
                if c + 1 == r.len() {
                    line.push_str(cell);
                } else {
                    line.push_str(cell);
                    line.push_str(&" ".repeat(widths[c] - cell.chars().count() + 2));
                }
            }
            line.trim_end().to_string()
        })
        .collect()
}

fn print_status(r: &StatusReport) {
    println!(
        "tailnet {} ({})",
        r.tailnet.as_deref().unwrap_or("-"),
        r.backend_state
    );
    let mut rows = vec![vec![
        "NODE".to_string(),
        "ADDRESS".into(),
        "ONLINE".into(),
        "CONNECTION".into(),
        "LAST SEEN".into(),
        "ROLES".into(),
    ]];
    for n in &r.nodes {
        rows.push(vec![
            n.name.to_string(),
            n.address.to_string(),
            if !n.present {
                "absent".into()
            } else if n.online {
                "yes".into()
            } else {
                "no".into()
            },
            n.connection.as_ref().map_or("-".into(), |c| c.to_string()),
            n.last_seen.clone().unwrap_or_else(|| "-".into()),
            n.roles
                .iter()
                .map(|r| r.as_str())
                .collect::<Vec<_>>()
                .join(","),
        ]);
    }
    for line in table(&rows) {
        println!("{line}");
    }
    if r.drift.is_empty() {
        println!("drift: none");
    } else {
        println!("drift ({}):", r.drift.len());
        for d in &r.drift {
            println!("  {d}");
        }
    }
}

/// `fleetnix status`.
pub fn status(ctx: &Ctx, a: StatusArgs) -> ExitCode {
    let fleet = match ctx.fleet() {
        Ok(f) => f,
        Err(code) => return code,
    };
    let rt = match runtime() {
        Ok(rt) => rt,
        Err(code) => return code,
    };
    let st = match rt.block_on(async {
        let ts = Tailscale::locate().map_err(|e| e.to_string())?;
        ts.status().await.map_err(|e| e.to_string())
    }) {
        Ok(st) => st,
        Err(e) => {
            eprintln!("error: {e}");
            return ExitCode::from(1);
        }
    };
    let report = status::status_report(&fleet, &st);
    if a.json {
        match json_line(&report, true) {
            Ok(s) => println!("{s}"),
            Err(code) => return code,
        }
    } else {
        print_status(&report);
    }
    if report.drift.is_empty() {
        ExitCode::SUCCESS
    } else {
        ExitCode::from(1)
    }
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

/// `fleetnix health`.
pub fn health(ctx: &Ctx, a: HealthArgs) -> ExitCode {
    let fleet = match ctx.fleet() {
        Ok(f) => f,
        Err(code) => return code,
    };
    let rt = match runtime() {
        Ok(rt) => rt,
        Err(code) => return code,
    };
    if a.watch {
        return rt.block_on(watch(&fleet, &a));
    }
    let report = rt.block_on(async {
        let st = tailnet_status().await?;
        Ok::<_, String>(health::sweep(&fleet, Some(&st), &ProbeOptions::for_fleet(&fleet)).await)
    });
    let report = match report {
        Ok(r) => r,
        Err(e) => {
            eprintln!("error: {e}");
            return ExitCode::from(1);
        }
    };
    if a.json {
        match json_line(&report, true) {
            Ok(s) => println!("{s}"),
            Err(code) => return code,
        }
    } else {
        for line in health_lines(&report, use_colour()) {
            println!("{line}");
        }
    }
    if report.all_healthy() {
        ExitCode::SUCCESS
    } else {
        ExitCode::from(1)
    }
}

async fn watch(fleet: &Fleet, a: &HealthArgs) -> ExitCode {
    let opts = ProbeOptions::for_fleet(fleet);
    let tty = std::io::stdout().is_terminal();
    let colour = use_colour();
    let mut alerter = None;
    if fleet.settings.failure.alert_on_node_down {
        match Ntfy::for_fleet(fleet, Duration::from_secs(10)) {
            Ok(n) => alerter = Some(Alerter::new(n)),
            Err(e) => {
                eprintln!("error: {e}");
                return ExitCode::from(1);
            }
        }
    }
    let mut tracker = StateTracker::new();
    let mut sweeps = 0u64;
    let ctrl_c = tokio::signal::ctrl_c();
    tokio::pin!(ctrl_c);
    loop {
        let started = Instant::now();
        let mut out: Vec<String> = Vec::new();
        let stamp = humantime::format_rfc3339_seconds(std::time::SystemTime::now());
        match tailnet_status().await {
            Err(e) => {
                // Without the tailnet's view no verdict is fair: keep the last states, alert nothing.
                out.push(format!(
                    "{stamp}  warning: {e}; retrying in {:?}",
                    a.interval
                ));
            }
            Ok(st) => {
                let report = health::sweep(fleet, Some(&st), &opts).await;
                let transitions = tracker.update(&report);
                if let Some(al) = alerter.as_mut() {
                    al.observe(&transitions);
                    let (_sent, err) = al.flush().await;
                    if let Some(e) = err {
                        eprintln!("warning: {e}; {} alert(s) queued for retry", al.pending());
                    }
                }
                if a.json {
                    match json_line(&report, false) {
                        Ok(s) => out.push(s),
                        Err(code) => return code,
                    }
                } else {
                    out.push(format!(
                        "fleetnix health  {stamp}  every {}",
                        humantime::format_duration(a.interval)
                    ));
                    out.extend(health_lines(&report, colour));
                }
            }
        }
        let mut stdout = std::io::stdout().lock();
        let mut text = String::new();
        if tty && !a.json {
            // Home the cursor and clear the screen: refresh in place.
            text.push_str("\x1b[H\x1b[2J");
        }
        for l in &out {
            text.push_str(l);
            text.push('\n');
        }
        if !tty && !a.json {
            // Plain output: one block per sweep, separated by a blank line.
            text.push('\n');
        }
        if stdout
            .write_all(text.as_bytes())
            .and_then(|()| stdout.flush())
            .is_err()
        {
            // stdout closed (e.g. piped into `head`): stop quietly.
            return ExitCode::SUCCESS;
        }
        drop(stdout);
        sweeps += 1;
        if a.count.is_some_and(|c| sweeps >= c) {
            return ExitCode::SUCCESS;
        }
        let wait = a.interval.saturating_sub(started.elapsed());
        tokio::select! {
            _ = tokio::time::sleep(wait) => {}
            _ = &mut ctrl_c => return ExitCode::SUCCESS,
        }
    }
}

/// `fleetnix route`.
pub fn route(ctx: &Ctx, a: RouteArgs) -> ExitCode {
    let fleet = match ctx.fleet() {
        Ok(f) => f,
        Err(code) => return code,
    };
    let rt = match runtime() {
        Ok(rt) => rt,
        Err(code) => return code,
    };
    let with_role: Vec<&Node> = fleet
        .nodes
        .iter()
        .filter(|n| n.roles.iter().any(|r| r.as_str() == a.role))
        .collect();
    let report = rt.block_on(async {
        let st = tailnet_status().await?;
        Ok::<_, String>(
            health::sweep_nodes(
                &fleet,
                &with_role,
                Some(&st),
                &ProbeOptions::for_fleet(&fleet),
            )
            .await,
        )
    });
    let report = match report {
        Ok(r) => r,
        Err(e) => {
            eprintln!("error: {e}");
            return ExitCode::from(1);
        }
    };
    let router = Router::new(&fleet).with_state_dir(ctx.root.join(".fleetnix"));
    match router.route(&a.role, &report) {
        Ok(r) => {
            if a.json {
                match json_line(&r, true) {
                    Ok(s) => println!("{s}"),
                    Err(code) => return code,
                }
            } else {
                println!("{}", r.node());
                if ctx.verbose > 0 {
                    let order: Vec<&str> = r.order.iter().map(|n| n.as_str()).collect();
                    eprintln!("order: {}", order.join(", "));
                    for (n, s) in &r.skipped {
                        eprintln!("skipped {n}: {s}");
                    }
                }
            }
            ExitCode::SUCCESS
        }
        Err(e) => {
            eprintln!("error: {e}");
            ExitCode::from(1)
        }
    }
}
