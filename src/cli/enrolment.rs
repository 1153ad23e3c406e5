//! `status --enrolment`: could every node log in again today? The work is in
//! `fleetnix::health::enrolment`.

use super::table::table;
use super::{runtime, to_json, CliError, CmdResult, Ctx, Outcome};
use fleetnix::health::enrolment::{self, CanLogIn, EnrolmentReport, Stored};
use fleetnix::model::{CredentialKind, NodeName};
use fleetnix::secrets::{SecretId, SecretKind};
use fleetnix::tailscale::Tailscale;
use std::path::Path;

/// What the stored secret of `node` is: decrypted in memory with `identity` when given; only its
/// kind and (for a pre-auth key) its id leave this function.
fn stored_credential(root: &Path, node: &NodeName, identity: Option<&Path>) -> Stored {
    let id = SecretId::new(node.clone(), SecretKind::TailscaleAuthkey);
    if !root.join(id.age_path()).is_file() {
        return Stored::Missing;
    }
    let Some(identity) = identity else {
        return Stored::Unknown("not decrypted: no operator identity (--identity FILE)".into());
    };
    match fleetnix::secrets::decrypt_secret(root, &id, identity) {
        Ok(bytes) => {
            let text = std::str::from_utf8(&bytes).unwrap_or_default().trim();
            Stored::Known {
                kind: CredentialKind::of(text),
                key_id: CredentialKind::preauth_key_id(text).map(str::to_string),
            }
        }
        Err(e) => Stored::Unknown(format!("not decrypted: {e}")),
    }
}

fn print(r: &EnrolmentReport) {
    println!("nodes enrol with: {}", r.tailscale_auth);
    let mut rows = vec![vec![
        "NODE".to_string(),
        "CREDENTIAL".into(),
        "KEY ID".into(),
        "KEY EXPIRES".into(),
        "KEY VALID".into(),
        "JOINED".into(),
        "NODE KEY EXPIRES".into(),
        "CAN LOG IN".into(),
    ]];
    let dash = || "-".to_string();
    for n in &r.nodes {
        rows.push(vec![
            n.node.to_string(),
            n.credential.clone(),
            n.key_id.clone().unwrap_or_else(dash),
            n.key_expires.clone().unwrap_or_else(dash),
            n.key_valid
                .map_or_else(dash, |v| if v { "yes" } else { "no" }.into()),
            if n.joined { "yes" } else { "no" }.into(),
            n.node_key_expires.clone().unwrap_or_else(dash),
            match &n.can_log_in {
                CanLogIn::Yes => "yes".into(),
                CanLogIn::No(_) => "no".into(),
                CanLogIn::Unknown(_) => "unknown".into(),
            },
        ]);
    }
    for line in table(&rows) {
        println!("{line}");
    }
    for n in &r.nodes {
        if let CanLogIn::Unknown(why) = &n.can_log_in {
            println!("{}: cannot tell whether it could log in: {why}", n.node);
        }
    }
    for s in &r.at_risk {
        println!(
            "warning: {}: {}; before it has to log in again: {}",
            s.node, s.reason, s.fix
        );
    }
    if r.stranded.is_empty() {
        println!("stranded: none");
    } else {
        println!("stranded ({}):", r.stranded.len());
        for s in &r.stranded {
            println!("  {}: {}\n    fix: {}", s.node, s.reason, s.fix);
        }
    }
}

/// What `status --enrolment` is given (its flags live on `status`).
pub struct EnrolmentArgs {
    /// JSON output.
    pub json: bool,
    /// Operator identity that decrypts the nodes' auth keys.
    pub identity: Option<std::path::PathBuf>,
    /// File holding the API access token.
    pub token_file: Option<std::path::PathBuf>,
}

/// `fleetnix status --enrolment`: exit 1 when a node is stranded.
pub fn run(ctx: &Ctx, a: EnrolmentArgs) -> CmdResult {
    let fleet = ctx.fleet()?;
    let identity = a
        .identity
        .clone()
        .or_else(|| fleetnix::secret::default_identity().filter(|p| p.is_file()));
    let token_given =
        a.token_file.is_some() || std::env::var_os(fleetnix::tailscale::api::TOKEN_ENV).is_some();
    let api = if token_given {
        Some(super::acl::client(
            &fleet,
            &super::acl::ApiArgs {
                token_file: a.token_file.clone(),
            },
        )?)
    } else {
        None
    };
    let report = runtime()?.block_on(async {
        // This machine's view is optional when the API lists the devices.
        let ts = match Tailscale::locate() {
            Ok(t) => t.status().await.ok(),
            Err(_) => None,
        };
        if ts.is_none() && api.is_none() {
            return Err(CliError::could_not_run(
                "neither this machine's `tailscale status` nor the Tailscale API (TS_API_KEY or --token-file) is available: nothing says which nodes are joined",
            ));
        }
        let facts = enrolment::gather(
            &fleet,
            |n| stored_credential(&ctx.root, n, identity.as_deref()),
            api.as_ref(),
            ts.as_ref(),
        )
        .await
        .map_err(CliError::could_not_run)?;
        Ok(enrolment::assess(
            &fleet,
            &facts,
            std::time::SystemTime::now(),
        ))
    })?;
    if a.json {
        println!("{}", to_json(&report, true)?);
    } else {
        print(&report);
    }
    Ok(Outcome::ok_if(report.stranded.is_empty()))
}
