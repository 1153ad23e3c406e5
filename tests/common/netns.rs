//! Test hosts in network namespaces (see the project's shared `design.md`, "Test hosts").
//!
//! ```no_run
//! let Some(mut net) = common::netns::Net::new() else { return }; // skipped loudly (fails under CI)
//! let host = net.add_host("web", common::netns::HostOptions::default());
//! let out = net.command("ssh").arg(format!("root@{}", host.addr)).output();
//! net.kill_sshd(&host); // or net.link_down(&host)
//! ```
//!
//! - [`Net::new`] creates a *hub* namespace holding a bridge `br0` (100.64.0.254/24); nothing is
//!   added to the root namespace, so addresses never collide with the host or other tests.
//! - [`Net::add_host`] creates one namespace per host, a veth pair into the bridge, the next
//!   address (100.64.0.1, .2, …) and the same on the tailnet's IPv6 prefix ([`Host::addr6`],
//!   `fd7a:115c:a1e0::1`, …; the hub is `::fe`), a fresh ed25519 host key, and runs
//!   `sshd -D -f <config>` in it, listening on both,
//!   authorizing [`Net::client_key`]. `HostOptions` give it an `/etc/os-release` (through
//!   `/etc/netns/<ns>/`), a PATH and environment for its sessions (sshd `SetEnv`), directories
//!   from `/etc/netns/<ns>/` over `/etc`, and bind mounts in its own mount namespace.
//! - Programs that talk to hosts run inside the hub: [`Net::command`]; code of the test itself
//!   (a server on a host, a client in the hub) through [`run_in`].
//! - `HostOptions { no_sshd: true, .. }` makes a bare host: its address, no sshd.
//! - Faults: [`Net::kill_sshd`], [`Net::link_down`].
//! - Dropping the `Net` (also while a test panics) kills every process in its namespaces and
//!   deletes them and their `/etc/netns` entries. Leftovers of killed test processes are swept
//!   by the next `Net::new`.

use super::wait_for;
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::atomic::{AtomicU32, Ordering};
use std::time::Duration;

const PREFIX: &str = "fxt";
static COUNTER: AtomicU32 = AtomicU32::new(0);

/// How one test host is set up.
#[derive(Debug, Clone, Default)]
pub struct HostOptions {
    /// Contents of the host's `/etc/os-release` (Debian's if `None`).
    pub os_release: Option<String>,
    /// Directories put before the standard PATH of SSH sessions.
    pub path_prefix: Vec<PathBuf>,
    /// Extra environment of SSH sessions (sshd `SetEnv`).
    pub env: Vec<(String, String)>,
    /// Directories under `/etc` (e.g. `systemd`) replaced by empty per-host copies.
    pub etc_dirs: Vec<String>,
    /// `(source, target)` bind mounts in the host's own mount namespace (targets must exist).
    pub binds: Vec<(PathBuf, PathBuf)>,
    /// No sshd: a bare host that only has its address (serve from it with [`run_in`]).
    pub no_sshd: bool,
}

/// A running test host.
#[derive(Debug, Clone)]
pub struct Host {
    /// Name given to [`Net::add_host`].
    pub name: String,
    /// Its network namespace.
    pub ns: String,
    /// Its address on the bridge.
    pub addr: Ipv4Addr,
    /// Its IPv6 address on the bridge, in Tailscale's ULA prefix (`fd7a:115c:a1e0::<n>`).
    pub addr6: Ipv6Addr,
    /// Its SSH host public key, `ssh-ed25519 AAAA…` (no comment).
    pub host_key: String,
    /// A private directory for the test's files about this host.
    pub dir: PathBuf,
    /// The per-host `/etc` overlay directory (`/etc/netns/<ns>`).
    pub etc: PathBuf,
}

struct Running {
    host: Host,
    sshd: Option<Child>,
    binds: Vec<(PathBuf, PathBuf)>,
    /// TCP listeners in the host's namespace, by port (held by the test process; connections
    /// complete in the kernel's backlog, so nothing needs to accept them).
    listeners: Vec<(u16, std::net::TcpListener)>,
}

/// A hub namespace with test hosts. See the module docs.
pub struct Net {
    hub: String,
    dir: tempfile::TempDir,
    hosts: Vec<Running>,
    client_key: PathBuf,
    client_pub: String,
}

fn sh(cmd: &mut Command) -> Result<String, String> {
    let out = cmd
        .stdin(Stdio::null())
        .output()
        .map_err(|e| format!("{cmd:?}: {e}"))?;
    if out.status.success() {
        Ok(String::from_utf8_lossy(&out.stdout).into_owned())
    } else {
        Err(format!(
            "{cmd:?} failed: {}",
            String::from_utf8_lossy(&out.stderr).trim()
        ))
    }
}

fn ip(args: &[&str]) {
    if let Err(e) = sh(Command::new("ip").args(args)) {
        panic!("test network setup: {e}");
    }
}

fn keygen(path: &Path) -> String {
    sh(Command::new("ssh-keygen")
        .args(["-q", "-t", "ed25519", "-N", "", "-C", "fleetnix-test", "-f"])
        .arg(path))
    .expect("ssh-keygen runs");
    let pubkey = std::fs::read_to_string(path.with_extension("pub")).expect("public key written");
    pubkey
        .split_whitespace()
        .take(2)
        .collect::<Vec<_>>()
        .join(" ")
}

/// Deletes namespaces (and /etc/netns entries) left by test processes that no longer exist.
fn sweep_stale() {
    let Ok(entries) = std::fs::read_dir("/run/netns") else {
        return;
    };
    for e in entries.flatten() {
        let name = e.file_name().to_string_lossy().into_owned();
        let Some(pid) = name
            .strip_prefix(&format!("{PREFIX}-"))
            .and_then(|r| r.split('-').next())
            .and_then(|p| p.parse::<u32>().ok())
        else {
            continue;
        };
        if Path::new(&format!("/proc/{pid}")).exists() {
            continue;
        }
        kill_all_in(&name);
        let _ = sh(Command::new("ip").args(["netns", "del", &name]));
        let _ = std::fs::remove_dir_all(Path::new("/etc/netns").join(&name));
        // A real-systemd host (systemd_host.rs) of that test: nspawn's propagation dir.
        let _ = std::fs::remove_dir_all(Path::new("/run/systemd/nspawn/propagate").join(&name));
    }
}

fn kill_all_in(ns: &str) {
    if let Ok(pids) = sh(Command::new("ip").args(["netns", "pids", ns])) {
        for pid in pids
            .split_whitespace()
            .filter_map(|p| p.parse::<i32>().ok())
        {
            if let Some(pid) = rustix::process::Pid::from_raw(pid) {
                let _ = rustix::process::kill_process(pid, rustix::process::Signal::KILL);
            }
        }
    }
}

/// Runs `f` on a thread that entered the network namespace `ns` ([`Net::hub`] or a
/// [`Host::ns`]) and returns its result: sockets it creates belong to `ns`, from any thread.
pub fn run_in<T: Send + 'static>(ns: &str, f: impl FnOnce() -> T + Send + 'static) -> T {
    let path = Path::new("/run/netns").join(ns);
    std::thread::spawn(move || {
        let fd = std::fs::File::open(&path).unwrap_or_else(|e| panic!("{}: {e}", path.display()));
        // Only this short-lived thread changes its network namespace.
        rustix::thread::move_into_link_name_space(
            std::os::fd::AsFd::as_fd(&fd),
            Some(rustix::thread::LinkNameSpaceType::Network),
        )
        .unwrap_or_else(|e| panic!("setns {}: {e}", path.display()));
        f()
    })
    .join()
    .unwrap_or_else(|panic| std::panic::resume_unwind(panic))
}

impl Net {
    /// A new hub, or `None` when this environment cannot run namespace tests (not root, no
    /// `ip netns`): the test should return early. Says so loudly; panics instead when `CI` is set.
    pub fn new() -> Option<Net> {
        let root = rustix::process::geteuid().is_root();
        let hub = format!(
            "{PREFIX}-{}-{}",
            std::process::id(),
            COUNTER.fetch_add(1, Ordering::SeqCst)
        );
        let why = if !root {
            Some("not running as root".to_string())
        } else {
            sweep_stale();
            sh(Command::new("ip").args(["netns", "add", &hub])).err()
        };
        if let Some(why) = why {
            return super::skip(&format!(
                "network-namespace test needs root and `ip netns`: {why}"
            ));
        }
        let dir = tempfile::Builder::new()
            .prefix("fleetnix-netns-")
            .tempdir()
            .expect("temp dir");
        // From here on, Drop cleans up even if a step panics.
        let mut net = Net {
            hub,
            client_key: dir.path().join("client_key"),
            dir,
            hosts: Vec::new(),
            client_pub: String::new(),
        };
        let h = net.hub.clone();
        ip(&["-n", &h, "link", "set", "lo", "up"]);
        ip(&["-n", &h, "link", "add", "br0", "type", "bridge"]);
        ip(&["-n", &h, "addr", "add", "100.64.0.254/24", "dev", "br0"]);
        // `nodad`: usable at once, no duplicate address detection to wait for.
        ip(&[
            "-n",
            &h,
            "-6",
            "addr",
            "add",
            "fd7a:115c:a1e0::fe/64",
            "dev",
            "br0",
            "nodad",
        ]);
        ip(&["-n", &h, "link", "set", "br0", "up"]);
        net.client_pub = keygen(&net.client_key);
        std::fs::create_dir_all("/run/sshd").expect("sshd privilege separation dir");
        Some(net)
    }

    /// The hub namespace's name.
    pub fn hub(&self) -> &str {
        &self.hub
    }

    /// The private key every host authorizes (for `ssh -i` / `--ssh-identity`).
    pub fn client_key(&self) -> &Path {
        &self.client_key
    }

    /// A scratch directory that lives as long as the `Net`.
    pub fn dir(&self) -> &Path {
        self.dir.path()
    }

    /// `program` run inside the hub namespace, where the hosts are reachable.
    pub fn command(&self, program: impl AsRef<std::ffi::OsStr>) -> Command {
        let mut c = Command::new("ip");
        c.args(["netns", "exec", &self.hub]).arg(program);
        c
    }

    /// Creates a host and starts its sshd (unless `opts.no_sshd`); returns once sshd listens.
    pub fn add_host(&mut self, name: &str, opts: HostOptions) -> Host {
        let i = self.hosts.len() + 1;
        assert!(i < 250, "at most 249 hosts per Net");
        let ns = format!("{}-h{i}", self.hub);
        let addr = Ipv4Addr::new(100, 64, 0, i as u8);
        let addr6 = Ipv6Addr::new(0xfd7a, 0x115c, 0xa1e0, 0, 0, 0, 0, i as u16);
        let dir = self.dir.path().join(format!("host-{i}-{name}"));
        std::fs::create_dir_all(&dir).expect("host dir");
        let etc = Path::new("/etc/netns").join(&ns);
        std::fs::create_dir_all(&etc).expect("/etc/netns/<ns>");
        ip(&["netns", "add", &ns]);
        // Register now so Drop removes the namespace even if a later step panics.
        let host_key = keygen(&dir.join("ssh_host_ed25519_key"));
        let host = Host {
            name: name.to_string(),
            ns: ns.clone(),
            addr,
            addr6,
            host_key,
            dir: dir.clone(),
            etc: etc.clone(),
        };
        self.hosts.push(Running {
            host: host.clone(),
            sshd: None,
            binds: opts.binds.clone(),
            listeners: Vec::new(),
        });
        let veth = format!("v{i}");
        ip(&["-n", &ns, "link", "set", "lo", "up"]);
        ip(&[
            "-n", &self.hub, "link", "add", &veth, "type", "veth", "peer", "name", "eth0", "netns",
            &ns,
        ]);
        ip(&["-n", &self.hub, "link", "set", &veth, "master", "br0", "up"]);
        ip(&[
            "-n",
            &ns,
            "addr",
            "add",
            &format!("{addr}/24"),
            "dev",
            "eth0",
        ]);
        ip(&[
            "-n",
            &ns,
            "-6",
            "addr",
            "add",
            &format!("{addr6}/64"),
            "dev",
            "eth0",
            "nodad",
        ]);
        ip(&["-n", &ns, "link", "set", "eth0", "up"]);

        std::fs::write(
            etc.join("os-release"),
            opts.os_release.as_deref().unwrap_or(
                "PRETTY_NAME=\"Debian GNU/Linux 12 (bookworm)\"\nNAME=\"Debian GNU/Linux\"\nID=debian\n",
            ),
        )
        .expect("os-release");
        for d in &opts.etc_dirs {
            std::fs::create_dir_all(etc.join(d)).expect("etc dir");
        }
        std::fs::write(
            dir.join("authorized_keys"),
            format!("{}\n", self.client_pub),
        )
        .expect("authorized_keys");
        let mut path: Vec<String> = opts
            .path_prefix
            .iter()
            .map(|p| p.display().to_string())
            .collect();
        path.push("/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin".into());
        let mut setenv = format!("PATH={}", path.join(":"));
        for (k, v) in &opts.env {
            assert!(
                !v.contains([' ', '"', '\n']),
                "SetEnv values must be plain: {v:?}"
            );
            setenv.push_str(&format!(" {k}={v}"));
        }
        let cfg = dir.join("sshd_config");
        std::fs::write(
            &cfg,
            format!(
                "ListenAddress {addr}\nListenAddress {addr6}\nPort 22\nHostKey {d}/ssh_host_ed25519_key\nAuthorizedKeysFile {d}/authorized_keys\n\
                 PidFile {d}/sshd.pid\nStrictModes no\nPermitRootLogin prohibit-password\nPasswordAuthentication no\n\
                 KbdInteractiveAuthentication no\nUsePAM no\nSetEnv {setenv}\nLogLevel VERBOSE\n",
                d = dir.display()
            ),
        )
        .expect("sshd_config");
        if opts.no_sshd {
            assert!(opts.binds.is_empty(), "binds are mounted for sshd only");
        } else {
            self.start_sshd(&host, &opts.binds);
        }
        host
    }

    // The child is kept in `self.hosts` and waited for by `kill_sshd` or `Drop`.
    #[allow(clippy::zombie_processes)]
    fn start_sshd(&mut self, host: &Host, binds: &[(PathBuf, PathBuf)]) {
        let log = std::fs::File::create(host.dir.join("sshd.log")).expect("sshd log");
        let mut c = Command::new("ip");
        c.args(["netns", "exec", &host.ns]);
        let sshd = format!(
            "exec /usr/sbin/sshd -D -e -f {}",
            host.dir.join("sshd_config").display()
        );
        // sshd gets a mount namespace of its own: the host's bind mounts, and an empty
        // `/root/.bashrc`, so sessions (bash runs ~/.bashrc for ssh commands) do not run the
        // machine's shell setup, whose side effects on shared files (e.g. a pyenv rehash lock
        // left behind when a session is killed with its host) would leak between tests.
        let mut script = String::from("set -e\n");
        for (src, dst) in binds {
            script.push_str(&format!(
                "mount --bind '{}' '{}'\n",
                src.display(),
                dst.display()
            ));
        }
        // (Checked after the binds: one of them may cover /root.)
        script.push_str("if [ -f /root/.bashrc ]; then mount --bind /dev/null /root/.bashrc; fi\n");
        script.push_str(&sshd);
        c.args([
            "unshare",
            "--mount",
            "--propagation",
            "private",
            "sh",
            "-c",
            &script,
        ]);
        let child = c
            .stdin(Stdio::null())
            .stdout(log.try_clone().expect("log fd"))
            .stderr(log)
            .spawn()
            .expect("start sshd");
        if let Some(r) = self.hosts.iter_mut().find(|r| r.host.ns == host.ns) {
            r.sshd = Some(child);
        }
        let ns = host.ns.clone();
        wait_for(
            &format!(
                "sshd of {} to listen on its IPv4 and IPv6 addresses",
                host.name
            ),
            Duration::from_secs(10),
            || {
                sh(Command::new("ip").args(["netns", "exec", &ns, "ss", "-Hltn", "sport = :22"]))
                    .map(|o| o.lines().filter(|l| !l.trim().is_empty()).count() >= 2)
                    .unwrap_or(false)
            },
        );
    }

    /// Fault: kills the host's sshd listener (sessions already open keep running).
    pub fn kill_sshd(&mut self, host: &Host) {
        if let Some(r) = self.hosts.iter_mut().find(|r| r.host.ns == host.ns) {
            if let Some(mut c) = r.sshd.take() {
                let _ = c.kill();
                let _ = c.wait();
            }
        }
    }

    /// Fault: the host loses power. Every process in its namespace (sshd, sessions and all they
    /// started, e.g. fake timers) is killed. Files stay as they are: the test clears what a
    /// reboot would clear, then calls [`Net::power_on`].
    pub fn power_off(&mut self, host: &Host) {
        self.kill_sshd(host);
        kill_all_in(&host.ns);
    }

    /// Starts the host's sshd again (with its bind mounts), as after a boot.
    pub fn power_on(&mut self, host: &Host) {
        let binds = self
            .hosts
            .iter()
            .find(|r| r.host.ns == host.ns)
            .map(|r| r.binds.clone())
            .unwrap_or_default();
        self.start_sshd(host, &binds);
    }

    /// Makes the host accept TCP connections on `ports` (its services, as a health probe sees
    /// them) until [`Net::stop_listening`] or the end of the test.
    pub fn listen(&mut self, host: &Host, ports: &[u16]) {
        let addrs = [IpAddr::V4(host.addr), IpAddr::V6(host.addr6)];
        let ports = ports.to_vec();
        let bound = run_in(&host.ns, move || {
            ports
                .into_iter()
                .flat_map(|p| addrs.map(|a| (p, a)))
                .map(|(p, addr)| {
                    let l = std::net::TcpListener::bind((addr, p))
                        .unwrap_or_else(|e| panic!("listen on {addr} port {p}: {e}"));
                    (p, l)
                })
                .collect::<Vec<_>>()
        });
        if let Some(r) = self.hosts.iter_mut().find(|r| r.host.ns == host.ns) {
            r.listeners.extend(bound);
        }
    }

    /// Fault: the host's service on `port` stops listening (connections are refused).
    pub fn stop_listening(&mut self, host: &Host, port: u16) {
        if let Some(r) = self.hosts.iter_mut().find(|r| r.host.ns == host.ns) {
            r.listeners.retain(|(p, _)| *p != port);
        }
    }

    /// Fault: sets the host's link down (packets to it are lost; connections time out).
    pub fn link_down(&self, host: &Host) {
        ip(&["-n", &host.ns, "link", "set", "eth0", "down"]);
    }
}

impl Drop for Net {
    fn drop(&mut self) {
        for r in &mut self.hosts {
            if let Some(mut c) = r.sshd.take() {
                let _ = c.kill();
                let _ = c.wait();
            }
            kill_all_in(&r.host.ns);
            let _ = sh(Command::new("ip").args(["netns", "del", &r.host.ns]));
            let _ = std::fs::remove_dir_all(&r.host.etc);
        }
        kill_all_in(&self.hub);
        let _ = sh(Command::new("ip").args(["netns", "del", &self.hub]));
    }
}
