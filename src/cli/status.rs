//! `status`: the fleet as the tailnet sees it, and drift from the manifest. The work is in
//! `fleetnix::health::status`.

use super::table::table;
use super::{runtime, to_json, CliError, CmdResult, Ctx, Outcome};
use fleetnix::health::status::{self, StatusReport};
use fleetnix::tailscale::Tailscale;

/// Arguments of `status`.
#[derive(Debug, clap::Args)]
pub struct StatusArgs {
    /// JSON output.
    #[arg(long)]
    pub json: bool,
    /// Could every node log in again today? Credential kind, key expiry/validity (API), node key
    /// expiry; names stranded nodes and the fix (exit 1 when there is one).
    #[arg(long)]
    pub enrolment: bool,
    /// With --enrolment: operator identity that decrypts the nodes' auth keys [default:
    /// ~/.ssh/id_ed25519 if it exists; without one the kind is `unknown`].
    #[arg(long, value_name = "FILE", requires = "enrolment")]
    pub identity: Option<std::path::PathBuf>,
    /// With --enrolment: file holding the API access token [default: TS_API_KEY; without a
    /// token, key validity is not checked].
    #[arg(long, value_name = "FILE", requires = "enrolment")]
    pub token_file: Option<std::path::PathBuf>,
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

/// `fleetnix status`: exit 0 without drift, 1 with drift, 3 when tailscaled cannot be asked.
pub fn run(ctx: &Ctx, a: StatusArgs) -> CmdResult {
    if a.enrolment {
        let args = super::enrolment::EnrolmentArgs {
            json: a.json,
            identity: a.identity,
            token_file: a.token_file,
        };
        return super::enrolment::run(ctx, args);
    }
    let fleet = ctx.fleet()?;
    let st = runtime()?
        .block_on(async { Tailscale::locate()?.status().await })
        .map_err(CliError::could_not_run)?;
    let report = status::status_report(&fleet, &st);
    if a.json {
        println!("{}", to_json(&report, true)?);
    } else {
        print_status(&report);
    }
    Ok(Outcome::ok_if(report.drift.is_empty()))
}
