//! Shared helpers of the integration tests: the repository and its example fleet, the fakes
//! under `tests/fakes/` and the fixtures under `tests/fixtures/`, fake auth keys, polling with
//! a deadline, test fleets written to a temp dir, the namespace test hosts ([`netns`]) and the
//! test hosts that boot a real systemd in them ([`systemd_host`]).
#![allow(dead_code)] // each test binary uses a different subset

pub mod deploy;
pub mod netns;
pub mod plan;
pub mod rebuild_ng;
pub mod systemd_host;

use netns::{Host, HostOptions, Net};
use std::collections::BTreeMap;
use std::future::Future;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::sync::atomic::{AtomicU32, Ordering};
use std::time::{Duration, Instant};

/// The repository root.
pub fn repo() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR"))
}

/// The example fleet's directory, `fleet/`.
pub fn example_fleet_dir() -> PathBuf {
    repo().join("fleet")
}

/// The example fleet, loaded through the manifest.
pub fn example_fleet() -> fleetnix::model::Fleet {
    fleetnix::manifest::load(&example_fleet_dir()).expect("example fleet is valid")
}

/// Copies the example fleet's `nodes.yml`, `fleet.yml` and `services.yml` into `dir` (created),
/// without the demo `host_key`s (tests that need host keys give nodes keys of their own).
pub fn copy_example_fleet(dir: &Path) {
    std::fs::create_dir_all(dir).expect("fleet dir");
    for f in ["nodes.yml", "fleet.yml", "services.yml"] {
        std::fs::copy(example_fleet_dir().join(f), dir.join(f)).expect("copy of the example fleet");
    }
    strip_host_keys(&dir.join("nodes.yml"));
}

/// Removes every `host_key:` line of a nodes.yml.
pub fn strip_host_keys(nodes_yml: &Path) {
    let text = std::fs::read_to_string(nodes_yml).expect("nodes.yml");
    let kept: String = text
        .lines()
        .filter(|l| !l.trim_start().starts_with("host_key:"))
        .map(|l| format!("{l}\n"))
        .collect();
    std::fs::write(nodes_yml, kept).expect("nodes.yml");
}

/// The fleetnix binary under test.
pub fn fleetnix_bin() -> PathBuf {
    PathBuf::from(env!("CARGO_BIN_EXE_fleetnix"))
}

/// `tests/fakes`.
pub fn fakes() -> PathBuf {
    repo().join("tests/fakes")
}

/// The one fake `tailscale` CLI (its header lists the environment that drives it).
pub fn fake_tailscale() -> PathBuf {
    fakes().join("tailscale")
}

/// Our verbatim copy of the reference fixture `shared/reference/fixtures/tailscale-status.json`.
pub fn status_fixture() -> PathBuf {
    repo().join("tests/fixtures/tailscale-status.json")
}

/// The fixture's text.
pub fn status_fixture_text() -> String {
    std::fs::read_to_string(status_fixture()).expect("tailscale status fixture")
}

/// Writes an executable script.
pub fn write_script(path: &Path, text: &str) {
    use std::os::unix::fs::PermissionsExt;
    std::fs::write(path, text).expect("script");
    std::fs::set_permissions(path, std::fs::Permissions::from_mode(0o755)).expect("chmod");
}

/// A `tailscale` at `path` that is the fake one reporting the status file `status`: for code
/// run in the test process, which must not change the process environment.
pub fn fake_tailscale_reporting(path: &Path, status: &Path) -> PathBuf {
    let quote = |p: &Path| format!("'{}'", p.display().to_string().replace('\'', r"'\''"));
    write_script(
        path,
        &format!(
            "#!/bin/sh\nFAKE_TAILSCALE_STATUS={} exec {} \"$@\"\n",
            quote(status),
            quote(&fake_tailscale())
        ),
    );
    path.to_path_buf()
}

/// A finished command: its exit code and its output as text. `{}` shows both streams, for
/// assertion messages.
#[derive(Debug)]
pub struct Ran {
    /// Exit code (`None`: killed by a signal).
    pub code: Option<i32>,
    /// Standard output.
    pub stdout: String,
    /// Standard error.
    pub stderr: String,
}

impl Ran {
    /// Runs `cmd` to the end (no standard input).
    pub fn of(cmd: &mut Command) -> Ran {
        Ran::from(
            cmd.output()
                .unwrap_or_else(|e| panic!("cannot run {cmd:?}: {e}")),
        )
    }

    /// The summary row of `node`: the stdout line starting with `"<node> "`.
    pub fn row(&self, node: &str) -> &str {
        let prefix = format!("{node} ");
        self.stdout
            .lines()
            .find(|l| l.starts_with(&prefix))
            .unwrap_or_else(|| panic!("no summary row for {node}:\n{self}"))
    }
}

impl From<std::process::Output> for Ran {
    fn from(out: std::process::Output) -> Ran {
        Ran {
            code: out.status.code(),
            stdout: String::from_utf8_lossy(&out.stdout).into_owned(),
            stderr: String::from_utf8_lossy(&out.stderr).into_owned(),
        }
    }
}

impl std::fmt::Display for Ran {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{}\n{}", self.stdout, self.stderr)
    }
}

/// An obviously fake auth key, built at run time; the same for the whole test process.
pub fn fake_authkey() -> String {
    format!("tskey-auth-{}-{}", "FAKEtestkey", std::process::id())
}

/// An obviously fake auth key, built at run time, different on every call.
pub fn unique_fake_authkey() -> String {
    static N: AtomicU32 = AtomicU32::new(0);
    let nanos = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_nanos())
        .unwrap_or(0);
    format!(
        "tskey-auth-{}{}-{:x}{:x}{}",
        "FAKE",
        "TEST",
        nanos,
        std::process::id(),
        N.fetch_add(1, Ordering::Relaxed)
    )
}

/// Says loudly that the test did not run because of `why` and gives `None` to return on; when
/// `CI` is set it fails instead.
pub fn skip<T>(why: &str) -> Option<T> {
    if std::env::var_os("CI").is_some() {
        panic!("{why} (CI is set: failing instead of skipping)");
    }
    eprintln!("\n!!!!!!!! SKIPPED: {why}; this test did not run !!!!!!!!\n");
    None
}

/// `tool` found on PATH, or [`skip`] when it is missing (`install` says how to get it).
pub fn required_tool(tool: &str, install: &str) -> Option<PathBuf> {
    match which::which(tool) {
        Ok(p) => Some(p),
        Err(_) => skip(&format!("{tool} is not installed ({install})")),
    }
}

/// `nix-instantiate`, or [`skip`].
pub fn nix_instantiate() -> Option<PathBuf> {
    required_tool("nix-instantiate", "Debian package nix-bin")
}

/// Pause between two polls.
const POLL_EVERY: Duration = Duration::from_millis(20);

/// Asks `probe` every 20 ms until it gives a value, for at most `limit` (`None` then).
pub fn poll<T>(limit: Duration, mut probe: impl FnMut() -> Option<T>) -> Option<T> {
    let deadline = Instant::now() + limit;
    loop {
        if let Some(v) = probe() {
            return Some(v);
        }
        if Instant::now() >= deadline {
            return None;
        }
        std::thread::sleep(POLL_EVERY);
    }
}

/// [`poll`] for async probes (sleeps with tokio).
pub async fn poll_async<T, F: Future<Output = Option<T>>>(
    limit: Duration,
    mut probe: impl FnMut() -> F,
) -> Option<T> {
    let deadline = Instant::now() + limit;
    loop {
        if let Some(v) = probe().await {
            return Some(v);
        }
        if Instant::now() >= deadline {
            return None;
        }
        tokio::time::sleep(POLL_EVERY).await;
    }
}

/// Waits until `cond` holds, polling every 20 ms; panics with `what` after `limit`.
pub fn wait_for(what: &str, limit: Duration, mut cond: impl FnMut() -> bool) {
    if poll(limit, || cond().then_some(())).is_none() {
        panic!("timed out after {limit:?} waiting for {what}");
    }
}

/// Every file under `dir` (recursively) with its bytes, by path relative to `dir`; files that
/// vanish or cannot be read while it looks are left out (to prove nothing changed, or to scan
/// for a secret), and so is the repository lock file (`.fleetnix/lock`: a pid and a command).
pub fn snapshot(dir: &Path) -> BTreeMap<PathBuf, Vec<u8>> {
    let mut out = BTreeMap::new();
    let mut stack = vec![dir.to_path_buf()];
    while let Some(d) = stack.pop() {
        let Ok(entries) = std::fs::read_dir(&d) else {
            continue;
        };
        for e in entries.flatten() {
            let p = e.path();
            if p.is_dir() {
                stack.push(p);
            } else if let Ok(b) = std::fs::read(&p) {
                let rel = p.strip_prefix(dir).unwrap_or(&p).to_path_buf();
                // The repository lock every writing command takes (even one that then fails).
                if rel != Path::new(fleetnix::lock::LOCK_FILE) {
                    out.insert(rel, b);
                }
            }
        }
    }
    out
}

/// Lines of a file, or none if it does not exist.
pub fn lines(path: &Path) -> Vec<String> {
    std::fs::read_to_string(path)
        .map(|s| s.lines().map(String::from).collect())
        .unwrap_or_default()
}

/// `fleet.yml` of a test fleet (operators, ntfy and ports as in the example fleet).
pub struct FleetSettings<'a> {
    /// `control_plane:`.
    pub control_plane: &'a str,
    /// `nats_url:`, if any.
    pub nats_url: Option<String>,
    /// `fleet.node_timeout_seconds`.
    pub timeout_secs: u32,
    /// `fleet.retry_on_node_failure`.
    pub retry: bool,
    /// `fleet.failover_strategy`.
    pub strategy: &'a str,
    /// `fleet.alert_on_node_down`.
    pub alert_on_node_down: bool,
}

impl FleetSettings<'_> {
    /// The YAML text.
    pub fn yaml(&self) -> String {
        let nats = self
            .nats_url
            .as_ref()
            .map(|u| format!("nats_url: {u}\n"))
            .unwrap_or_default();
        format!(
            "control_plane: {cp}\n{nats}control_plane_port: 4000\ntailnet: \"-\"\n\
             operators:\n  group: group:operators\n  members: [ops@example.com]\n  keys: []\n\
             ntfy:\n  topic: fleet-alerts\n  port: 8090\n\
             fleet:\n  node_timeout_seconds: {timeout}\n  retry_on_node_failure: {retry}\n  \
             failover_strategy: {strategy}\n  alert_on_node_down: {alert}\n",
            cp = self.control_plane,
            timeout = self.timeout_secs,
            retry = self.retry,
            strategy = self.strategy,
            alert = self.alert_on_node_down,
        )
    }
}

/// One node of a test fleet.
#[derive(Debug, Clone)]
pub struct NodeSpec {
    /// Name.
    pub name: String,
    /// Address.
    pub addr: String,
    /// `os:` value.
    pub os: &'static str,
    /// `host_key:` value, if any.
    pub host_key: Option<String>,
    /// Roles.
    pub roles: Vec<String>,
    /// `resources.cpu`.
    pub cpu: u32,
    /// `resources.ram_gb`.
    pub ram_gb: u32,
}

impl NodeSpec {
    /// A NixOS node with `roles`, 2 CPUs and 4 GB, no host key.
    pub fn new(name: &str, addr: &str, roles: &[&str]) -> Self {
        NodeSpec {
            name: name.into(),
            addr: addr.into(),
            os: "nixos",
            host_key: None,
            roles: roles.iter().map(|r| r.to_string()).collect(),
            cpu: 2,
            ram_gb: 4,
        }
    }

    /// A NixOS glm-worker for a test host, pinned to its real key.
    pub fn for_host(h: &Host) -> Self {
        NodeSpec {
            host_key: Some(h.host_key.clone()),
            ..NodeSpec::new(&h.name, &h.addr.to_string(), &["glm-worker"])
        }
    }
}

/// The text of a `nodes.yml` listing `nodes`.
pub fn nodes_yaml(nodes: &[NodeSpec]) -> String {
    let mut y = String::from("nodes:\n");
    for n in nodes {
        y.push_str(&format!(
            "  - name: {}\n    tailscale_ip: {}\n    os: {}\n    roles: [{}]\n    resources: {{ cpu: {}, ram_gb: {} }}\n",
            n.name,
            n.addr,
            n.os,
            n.roles.join(", "),
            n.cpu,
            n.ram_gb
        ));
        if let Some(k) = &n.host_key {
            y.push_str(&format!("    host_key: \"{k}\"\n"));
        }
    }
    y
}

/// Writes a fleet repository (fleet/*.yml; services.yml from the example fleet) under `root`.
/// The control plane is the first node (it gets the catalog's control-plane roles too).
pub fn write_fleet(root: &Path, nodes: &[NodeSpec], timeout: u32, retry: bool) {
    let fleet = root.join("fleet");
    std::fs::create_dir_all(&fleet).expect("fleet dir");
    std::fs::copy(
        example_fleet_dir().join("services.yml"),
        fleet.join("services.yml"),
    )
    .expect("services.yml");
    let mut nodes = nodes.to_vec();
    // The catalog's services need their roles hosted somewhere: on the control plane.
    nodes[0]
        .roles
        .extend(["control-plane", "litellm-proxy", "temporal", "langfuse"].map(String::from));
    std::fs::write(fleet.join("nodes.yml"), nodes_yaml(&nodes)).expect("nodes.yml");
    let settings = FleetSettings {
        control_plane: &nodes[0].name,
        nats_url: Some(format!("nats://{}:4222", nodes[0].addr)),
        timeout_secs: timeout,
        retry,
        strategy: "round_robin",
        alert_on_node_down: false,
    };
    std::fs::write(fleet.join("fleet.yml"), settings.yaml()).expect("fleet.yml");
}

/// Host options of a NixOS test host. Its state dir (see [`state_dir`]) holds fake generations
/// `gens/<n>` (`bin/switch-to-configuration` records calls, `sw/bin` holds the coreutils the
/// guard uses and the `nix-env` stand-in), `boot-default` and, bound over `/run` in sshd's mount
/// namespace, `run/` (`current-system`, `sshd/`); generation 1 runs and is the profile
/// (`profiles-<name>/`, bound over `/nix/var/nix/profiles`) and the boot default. The fake
/// `systemd-run`/`systemctl` come first on PATH. It is healthy for the deploy's health gate:
/// `active/tailscaled.service` and `active/omp-agent.service` exist (the fake `systemctl
/// is-active` says so) and the catalog's TCP ports listen on its address ([`Net::listen`]).
pub fn nixos_host(net: &mut Net, name: &str) -> Host {
    nixos_host_with(net, name, Vec::new())
}

/// [`nixos_host`] with more `(source, target)` bind mounts in sshd's mount namespace.
pub fn nixos_host_with(net: &mut Net, name: &str, binds: Vec<(PathBuf, PathBuf)>) -> Host {
    let profiles = net.dir().join(format!("profiles-{name}"));
    let state = net.dir().join(format!("state-{name}"));
    let run = state.join("run");
    let gen1 = state.join("gens/1");
    for d in ["bin", "sw/bin"] {
        std::fs::create_dir_all(gen1.join(d)).expect("gens");
    }
    std::fs::create_dir_all(&profiles).expect("profiles");
    std::fs::create_dir_all(run.join("sshd")).expect("run/sshd");
    std::fs::copy(
        fakes().join("switch-to-configuration"),
        gen1.join("bin/switch-to-configuration"),
    )
    .expect("fake switch-to-configuration");
    std::fs::copy(fakes().join("nix-env"), gen1.join("sw/bin/nix-env")).expect("fake nix-env");
    for tool in ["mkdir", "rm", "touch", "ln", "mv", "cat", "readlink"] {
        let real = which::which(tool).expect("coreutils");
        std::os::unix::fs::symlink(real, gen1.join("sw/bin").join(tool)).expect("sw/bin");
    }
    std::os::unix::fs::symlink(&gen1, profiles.join("system-1-link")).expect("link");
    std::os::unix::fs::symlink("system-1-link", profiles.join("system")).expect("link");
    std::os::unix::fs::symlink(&gen1, run.join("current-system")).expect("link");
    std::fs::write(state.join("boot-default"), "1\n").expect("boot-default");
    std::fs::write(
        profiles.join(".fleetnix-test-host"),
        state.display().to_string(),
    )
    .expect("marker");
    let host = net.add_host(
        name,
        HostOptions {
            os_release: Some("NAME=NixOS\nID=nixos\n".into()),
            path_prefix: vec![fakes().join("host-bin")],
            env: vec![("FAKE_HOST_DIR".into(), state.display().to_string())],
            binds: [
                (profiles, PathBuf::from("/nix/var/nix/profiles")),
                (run, PathBuf::from("/run")),
            ]
            .into_iter()
            .chain(binds)
            .collect(),
            ..Default::default()
        },
    );
    // The fake nixos-rebuild finds sshd's pid file through the state dir.
    std::os::unix::fs::symlink(host.dir.join("sshd.pid"), state.join("sshd.pid"))
        .expect("pid link");
    // A healthy host, as the deploy's health gate sees it: tailscaled and the agent active
    // (the fake systemctl's `active/` markers) and every TCP service of the catalog listening.
    std::fs::create_dir_all(state.join("active")).expect("active units");
    for unit in fleetnix::deploy::gate::UNITS {
        std::fs::write(state.join("active").join(unit), "").expect("active unit");
    }
    net.listen(&host, &catalog_tcp_ports());
    host
}

/// Every TCP port of the example catalog (`fleet/services.yml`), sorted.
pub fn catalog_tcp_ports() -> Vec<u16> {
    let mut ports: Vec<u16> = example_fleet()
        .catalog
        .services
        .iter()
        .filter(|s| s.protocol == fleetnix::model::Protocol::Tcp)
        .map(|s| s.port)
        .collect();
    ports.sort_unstable();
    ports.dedup();
    ports
}

/// The generation a host made by [`nixos_host`] runs (`/run/current-system`), its profile
/// (`/nix/var/nix/profiles/system`) and its boot default, each as the generation number.
pub fn generations(net: &Net, name: &str) -> (String, String, String) {
    let state = state_dir(net, name);
    let number = |p: PathBuf| {
        p.file_name()
            .map(|n| n.to_string_lossy().into_owned())
            .unwrap_or_default()
    };
    let running =
        number(std::fs::read_link(state.join("run/current-system")).expect("current-system"));
    let profiles = net.dir().join(format!("profiles-{name}"));
    let link = std::fs::read_link(profiles.join("system")).expect("profile");
    let profile = number(std::fs::read_link(profiles.join(link)).expect("profile generation"));
    let boot = std::fs::read_to_string(state.join("boot-default"))
        .expect("boot-default")
        .trim()
        .to_string();
    (running, profile, boot)
}

/// The state dir of a host made by [`nixos_host`] (activations, systemd.log).
pub fn state_dir(net: &Net, name: &str) -> PathBuf {
    net.dir().join(format!("state-{name}"))
}

/// `fleetnix --root <root> deploy <args>` inside the hub, with the fake nixos-rebuild recording
/// into `<root>/rec` and the tailnet host-key lookup disabled.
pub fn deploy_cmd(net: &Net, root: &Path, args: &[&str]) -> Command {
    let rec = root.join("rec");
    std::fs::create_dir_all(&rec).expect("rec dir");
    let mut c = net.command(fleetnix_bin());
    c.arg("--root")
        .arg(root)
        .arg("deploy")
        .args(args)
        .arg("--ssh-identity")
        .arg(net.client_key())
        .env("FLEETNIX_NIXOS_REBUILD", fakes().join("nixos-rebuild"))
        .env("FLEETNIX_TAILSCALE", "")
        .env("FAKE_RECORD_DIR", &rec)
        // Local fakes (file:// install script, plain-http API): the test-only override.
        .env("FLEETNIX_ALLOW_INSECURE_URLS", "1")
        .env_remove("TAILSCALE_AUTHKEY");
    c
}

/// The example fleet's committed auth key, an obviously fake one: built at run time, so no
/// key-shaped literal sits in the source.
pub fn demo_authkey() -> String {
    format!("{}-{}-DEMO-not-a-real-key", "tskey", "auth")
}

/// CPU seconds (user + system) of process `pid` ("self" for this one) from `/proc/<pid>/stat`;
/// with `children`, those of its reaped children (what `getrusage(RUSAGE_CHILDREN)` gives), all
/// without `unsafe`.
pub fn proc_cpu_seconds(pid: &str, children: bool) -> f64 {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).unwrap_or_default();
    // Fields after the command name (which may hold spaces) start at field 3.
    let rest = stat.rsplit_once(") ").map(|(_, r)| r).unwrap_or("");
    let f: Vec<&str> = rest.split_whitespace().collect();
    let ticks = |field: usize| {
        f.get(field - 3)
            .and_then(|v| v.parse::<f64>().ok())
            .unwrap_or(0.0)
    };
    // utime, stime are fields 14 and 15; cutime, cstime 16 and 17.
    let (a, b) = if children { (16, 17) } else { (14, 15) };
    (ticks(a) + ticks(b)) / rustix::param::clock_ticks_per_second() as f64
}

/// An Ubuntu test host with the fake Tailscale install script and CLI (as in `deploy_fallback`).
pub fn ubuntu_host(net: &mut Net, name: &str) -> Host {
    // `ip netns exec` bind-mounts /etc/netns/<ns>/fleetnix over /etc/fleetnix only where that
    // mount point exists: an empty one keeps the host's writes in its own overlay.
    std::fs::create_dir_all("/etc/fleetnix").expect("/etc/fleetnix mount point");
    let state = net.dir().join(format!("state-{name}"));
    std::fs::create_dir_all(state.join("bin")).expect("state");
    net.add_host(
        name,
        HostOptions {
            os_release: Some("NAME=\"Ubuntu\"\nID=ubuntu\nID_LIKE=debian\n".into()),
            path_prefix: vec![state.join("bin"), fakes().join("host-bin")],
            env: vec![
                ("FAKE_HOST_DIR".into(), state.display().to_string()),
                (
                    "FAKE_TAILSCALE_SRC".into(),
                    fakes().join("tailscale").display().to_string(),
                ),
            ],
            etc_dirs: vec!["systemd/system".into(), "fleetnix".into()],
            ..Default::default()
        },
    )
}

/// An `ssh` wrapper (for `FLEETNIX_SSH`) that offers only the classical `curve25519-sha256` key
/// exchange. The benches run each figure with the machine's default ssh and with this one: this
/// machine's OpenSSH 9.2 negotiates `sntrup761x25519-sha512`, whose key generation costs the
/// client about 130 ms of CPU per connection, while `mlkem768x25519-sha256` (the default of
/// OpenSSH 9.9 and later, and of current NixOS and macOS) costs about as little as curve25519.
pub fn fast_kex_ssh(dir: &Path) -> PathBuf {
    use std::os::unix::fs::PermissionsExt;
    let ssh = which::which("ssh").expect("ssh on PATH");
    let path = dir.join("ssh-fast-kex");
    std::fs::write(
        &path,
        format!(
            "#!/bin/sh\nexec '{}' -o KexAlgorithms=curve25519-sha256 \"$@\"\n",
            ssh.display()
        ),
    )
    .expect("ssh wrapper");
    std::fs::set_permissions(&path, std::fs::Permissions::from_mode(0o755)).expect("chmod");
    path
}

/// SSH logins so far, summed over the hosts' sshd logs.
pub fn sshd_logins(hosts: &[Host]) -> usize {
    hosts
        .iter()
        .map(|h| {
            std::fs::read_to_string(h.dir.join("sshd.log"))
                .unwrap_or_default()
                .matches("Accepted publickey")
                .count()
        })
        .sum()
}
