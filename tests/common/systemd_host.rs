//! Test hosts that boot a real systemd: `systemd-nspawn` containers in the namespaces of a
//! [`Net`] (see `tests/README.md` and the shared `reference/systemd-test-hosts.md`).
//!
//! ```no_run
//! let Some(mut sys) = common::systemd_host::SystemdNet::new() else { return }; // skipped loudly
//! let host = sys.nixos_host("n1");             // NixOS-like: generations, boot default, unit PATH
//! let out = sys.command("ssh").arg(format!("root@{}", host.addr)).output(); // `Net` through Deref
//! sys.reboot(&host);                           // a real `systemctl reboot`, back once sshd listens
//! ```
//!
//! - The base image is the debootstrap tree `.ci/systemd-base` makes once per machine, outside
//!   the repository; its path comes in `FLEETNIX_TEST_SYSTEMD_BASE` (set by `.ci/run`). Without
//!   it the tests skip loudly, or fail when `CI` is set.
//! - Each host is a namespace of the [`Net`] (its address, veth and bridge come from
//!   [`Net::add_host`], without the machine's sshd) in which `systemd-nspawn -b` boots the
//!   base image with an overlay: the host's *disk* is its own upper layer (`<host dir>/disk`),
//!   the base stays untouched. Debian's `ssh.service` inside the container serves SSH with the
//!   host's per-test key and authorizes [`Net::client_key`].
//! - A supervisor thread starts nspawn again when it exits with 133 (what `systemctl reboot`
//!   inside makes it do, and what `systemd-nspawn@.service` does with `RestartForceExitStatus`):
//!   a real reboot, with a new `/run` and `/tmp` and the same disk. [`SystemdNet::power_cycle`]
//!   is the fault of a power cut: the container is killed, then booted again.
//! - Dropping the [`SystemdNet`] (also while a test panics) kills every container, waits for
//!   nspawn to exit, then the [`Net`] deletes the namespaces and the temp dirs.

use super::netns::{Host, HostOptions, Net};
use super::{fakes, skip, wait_for, Ran};
use std::io::Read;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::sync::atomic::{AtomicBool, AtomicU32, Ordering};
use std::sync::{Arc, Mutex};
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

/// The environment variable naming the base image (a root file system with systemd and sshd).
pub const BASE_ENV: &str = "FLEETNIX_TEST_SYSTEMD_BASE";

/// Where a NixOS-like host keeps the test's state on its disk: the fake generations
/// (`gens/<n>`), the boot loader's default (`boot-default`) and the stand-ins' records
/// (`activations`). Written into the profile folder's `.fleetnix-test-host` for the stand-ins.
pub const HOST_STATE: &str = "/var/lib/fleetnix-test";

/// The directory NixOS's service manager gives units as their whole `PATH`: only systemd's
/// own programs (see the shared `reference/systemd-transient-units.md`).
pub const SYSTEMD_ONLY_BIN: &str = "/opt/systemd-only/bin";

/// How long a boot may take until sshd listens (0.3 s here when the machine is quiet).
const BOOT_LIMIT: Duration = Duration::from_secs(60);

/// One container and its supervisor.
struct Machine {
    host: Host,
    /// The host's disk: the overlay's upper layer.
    disk: PathBuf,
    /// nspawn's `--machine` name (also under `/run/systemd/nspawn/propagate/`).
    machine: String,
    /// Set before the containers are killed: the supervisor must not boot again.
    stop: Arc<AtomicBool>,
    /// Set by [`SystemdNet::power_cycle`]: boot again whatever nspawn's exit status.
    power_on: Arc<AtomicBool>,
    /// Boots so far (nspawn starts).
    boots: Arc<AtomicU32>,
    /// The running nspawn's pid (0 between boots).
    nspawn_pid: Arc<AtomicU32>,
    /// nspawn's last exit status (`None` while it runs).
    last_exit: Arc<Mutex<Option<Option<i32>>>>,
    /// Time from each nspawn start until sshd accepted a connection.
    boot_times: Vec<Duration>,
    supervisor: Option<JoinHandle<()>>,
}

/// Hosts with a real systemd in the namespaces of a [`Net`] (reached through `Deref`). See
/// the module docs.
pub struct SystemdNet {
    machines: Vec<Machine>,
    base: PathBuf,
    // Dropped after the machines: the namespaces and temp dirs go last.
    net: Net,
}

impl std::ops::Deref for SystemdNet {
    type Target = Net;
    fn deref(&self) -> &Net {
        &self.net
    }
}

impl std::ops::DerefMut for SystemdNet {
    fn deref_mut(&mut self) -> &mut Net {
        &mut self.net
    }
}

/// The base image from [`BASE_ENV`], or why it cannot be used.
fn base_image() -> Result<PathBuf, String> {
    let Some(base) = std::env::var_os(BASE_ENV) else {
        return Err(format!(
            "{BASE_ENV} is not set (run `.ci/systemd-base` as root and export its output, or run .ci/run)"
        ));
    };
    let base = PathBuf::from(base);
    if !base.join("usr/lib/systemd/systemd").exists() || !base.join("usr/sbin/sshd").exists() {
        return Err(format!(
            "{BASE_ENV}={} holds no systemd and sshd (make it with .ci/systemd-base)",
            base.display()
        ));
    }
    Ok(base)
}

fn write(path: &Path, text: &str) {
    if let Some(d) = path.parent() {
        std::fs::create_dir_all(d).unwrap_or_else(|e| panic!("{}: {e}", d.display()));
    }
    std::fs::write(path, text).unwrap_or_else(|e| panic!("{}: {e}", path.display()));
}

fn symlink(target: impl AsRef<Path>, link: &Path) {
    if let Some(d) = link.parent() {
        std::fs::create_dir_all(d).unwrap_or_else(|e| panic!("{}: {e}", d.display()));
    }
    std::os::unix::fs::symlink(target.as_ref(), link)
        .unwrap_or_else(|e| panic!("{}: {e}", link.display()));
}

fn chmod(path: &Path, mode: u32) {
    use std::os::unix::fs::PermissionsExt;
    std::fs::set_permissions(path, std::fs::Permissions::from_mode(mode))
        .unwrap_or_else(|e| panic!("{}: {e}", path.display()));
}

/// The pid (in the machine's pid namespace) of the container's PID 1 in network namespace `ns`.
pub fn leader_in(ns: &str) -> Option<u32> {
    let out = Command::new("ip")
        .args(["netns", "pids", ns])
        .stdin(Stdio::null())
        .output()
        .ok()?;
    String::from_utf8_lossy(&out.stdout)
        .split_whitespace()
        .filter_map(|p| p.parse::<u32>().ok())
        .find(|pid| {
            let status = std::fs::read_to_string(format!("/proc/{pid}/status")).unwrap_or_default();
            let nspid_is_1 = status
                .lines()
                .find_map(|l| l.strip_prefix("NSpid:"))
                .and_then(|v| v.split_whitespace().last())
                == Some("1");
            nspid_is_1 && status.lines().next() == Some("Name:\tsystemd")
        })
}

fn kill(pid: u32, sig: rustix::process::Signal) {
    if let Some(pid) = rustix::process::Pid::from_raw(pid as i32) {
        let _ = rustix::process::kill_process(pid, sig);
    }
}

impl SystemdNet {
    /// A new hub for real-systemd hosts, or `None` when they cannot run here (not root, no
    /// namespaces, no `systemd-nspawn`, no base image): the test should return early. Says so
    /// loudly; panics instead when `CI` is set.
    pub fn new() -> Option<SystemdNet> {
        if let Err(why) = base_image() {
            return skip(&format!("real-systemd test hosts need a base image: {why}"));
        }
        super::required_tool("systemd-nspawn", "Debian package systemd-container")?;
        let base = base_image().ok()?;
        let net = Net::new()?;
        Some(SystemdNet {
            machines: Vec::new(),
            base,
            net,
        })
    }

    /// The [`Net`] the hosts live in.
    pub fn net(&self) -> &Net {
        &self.net
    }

    fn machine(&self, host: &Host) -> &Machine {
        self.machines
            .iter()
            .find(|m| m.host.ns == host.ns)
            .unwrap_or_else(|| panic!("{} is not a systemd host", host.name))
    }

    fn machine_mut(&mut self, host: &Host) -> &mut Machine {
        self.machines
            .iter_mut()
            .find(|m| m.host.ns == host.ns)
            .unwrap_or_else(|| panic!("{} is not a systemd host", host.name))
    }

    /// A host booting the plain base image (Debian with systemd and sshd); `prepare` writes
    /// into its disk (the overlay's upper layer, a directory standing for `/`) before the
    /// first boot. Returns once sshd accepts connections.
    pub fn add_host(&mut self, name: &str, prepare: impl FnOnce(&Path)) -> Host {
        let host = self.net.add_host(
            name,
            HostOptions {
                no_sshd: true,
                ..Default::default()
            },
        );
        let disk = host.dir.join("disk");
        // sshd: this host's own key, the test's client key, nothing of the image's.
        let key = std::fs::read(host.dir.join("ssh_host_ed25519_key")).expect("host key");
        let etc_ssh = disk.join("etc/ssh");
        std::fs::create_dir_all(&etc_ssh).expect("etc/ssh");
        std::fs::write(etc_ssh.join("ssh_host_ed25519_key"), key).expect("host key");
        chmod(&etc_ssh.join("ssh_host_ed25519_key"), 0o600);
        write(
            &etc_ssh.join("ssh_host_ed25519_key.pub"),
            &format!("{}\n", host.host_key),
        );
        write(
            &etc_ssh.join("sshd_config.d/fleetnix-test.conf"),
            &format!(
                "ListenAddress {}\nHostKey /etc/ssh/ssh_host_ed25519_key\nPermitRootLogin prohibit-password\n\
                 PasswordAuthentication no\nKbdInteractiveAuthentication no\nLogLevel VERBOSE\n",
                host.addr
            ),
        );
        let client_pub = std::fs::read_to_string(self.net.client_key().with_extension("pub"))
            .expect("client public key");
        let ssh_dir = disk.join("root/.ssh");
        write(&ssh_dir.join("authorized_keys"), &client_pub);
        chmod(&ssh_dir, 0o700);
        chmod(&ssh_dir.join("authorized_keys"), 0o600);
        // sshd as one long-running service, as NixOS runs it (`startWhenNeeded` is off by
        // default), not Debian's socket activation (`ssh.socket` conflicts with `ssh.service`).
        symlink("/dev/null", &disk.join("etc/systemd/system/ssh.socket"));
        // Boot/shutdown records in utmp are nothing a test reads, and the unit once failed on a
        // loaded machine (the system then `degraded`, not `running`): masked, like on many
        // containers.
        for unit in [
            "systemd-update-utmp.service",
            "systemd-update-utmp-runlevel.service",
        ] {
            symlink("/dev/null", &disk.join("etc/systemd/system").join(unit));
        }
        write(&disk.join("etc/hostname"), &format!("{name}\n"));
        prepare(&disk);

        let machine = host.ns.clone();
        let stop = Arc::new(AtomicBool::new(false));
        let power_on = Arc::new(AtomicBool::new(false));
        let boots = Arc::new(AtomicU32::new(0));
        let nspawn_pid = Arc::new(AtomicU32::new(0));
        let last_exit = Arc::new(Mutex::new(None));
        let mut cmd = Command::new("systemd-nspawn");
        cmd.arg("--quiet")
            .arg("--boot")
            .arg(format!("--directory={}", self.base.display()))
            .arg(format!(
                "--overlay={}:{}:/",
                self.base.display(),
                disk.display()
            ))
            .arg(format!("--machine={machine}"))
            // No host systemd to register with or ask for a scope (see the reference).
            .args(["--register=no", "--keep-unit"])
            .arg(format!("--network-namespace-path=/run/netns/{}", host.ns))
            // Nothing of the machine's: no journal link, resolv.conf or time zone copied in.
            .args([
                "--link-journal=no",
                "--resolv-conf=off",
                "--timezone=off",
                "--console=passive",
            ])
            .stdin(Stdio::null());
        let log = host.dir.join("nspawn.log");
        let supervisor = {
            let (stop, power_on, boots, nspawn_pid, last_exit) = (
                stop.clone(),
                power_on.clone(),
                boots.clone(),
                nspawn_pid.clone(),
                last_exit.clone(),
            );
            std::thread::spawn(move || loop {
                if stop.load(Ordering::SeqCst) {
                    return;
                }
                let out = std::fs::OpenOptions::new()
                    .create(true)
                    .append(true)
                    .open(&log)
                    .expect("nspawn log");
                *last_exit.lock().expect("lock") = None;
                let mut child = match cmd
                    .stdout(out.try_clone().expect("log fd"))
                    .stderr(out)
                    .spawn()
                {
                    Ok(c) => c,
                    Err(e) => {
                        eprintln!("cannot start systemd-nspawn: {e}");
                        *last_exit.lock().expect("lock") = Some(None);
                        return;
                    }
                };
                nspawn_pid.store(child.id(), Ordering::SeqCst);
                boots.fetch_add(1, Ordering::SeqCst);
                let status = child.wait().ok().and_then(|s| s.code());
                nspawn_pid.store(0, Ordering::SeqCst);
                *last_exit.lock().expect("lock") = Some(status);
                let again = power_on.swap(false, Ordering::SeqCst) || status == Some(133);
                if stop.load(Ordering::SeqCst) || !again {
                    return;
                }
            })
        };
        self.machines.push(Machine {
            host: host.clone(),
            disk,
            machine,
            stop,
            power_on,
            boots,
            nspawn_pid,
            last_exit,
            boot_times: Vec::new(),
            supervisor: Some(supervisor),
        });
        self.wait_for_sshd(&host, Instant::now());
        host
    }

    /// Waits until the host's sshd accepts a TCP connection (polling a connect from the hub),
    /// and records the boot's time from `since`. Panics with the container's log when nspawn
    /// ended or the bound passed.
    fn wait_for_sshd(&mut self, host: &Host, since: Instant) {
        let addr = std::net::SocketAddr::from((host.addr, 22));
        let m = self.machine(host);
        let last_exit = m.last_exit.clone();
        let power_on = m.power_on.clone();
        let log = host.dir.join("nspawn.log");
        let up = super::netns::run_in(self.net.hub(), move || {
            super::poll(BOOT_LIMIT, || {
                if let Some(code) = *last_exit.lock().expect("lock") {
                    if code != Some(133) && !power_on.load(Ordering::SeqCst) {
                        return Some(Err(format!("systemd-nspawn exited ({code:?})")));
                    }
                }
                std::net::TcpStream::connect_timeout(&addr, Duration::from_millis(200))
                    .ok()
                    .map(|_| Ok(()))
            })
        });
        let fail = |why: String| {
            let mut text = String::new();
            if let Ok(mut f) = std::fs::File::open(&log) {
                let _ = f.read_to_string(&mut text);
            }
            panic!(
                "host {} did not come up: {why}\n--- nspawn log:\n{text}",
                host.name
            );
        };
        match up {
            Some(Ok(())) => {}
            Some(Err(why)) => fail(why),
            None => fail(format!("sshd not listening after {BOOT_LIMIT:?}")),
        }
        self.machine_mut(host).boot_times.push(since.elapsed());
    }

    /// A host that looks like NixOS where the deploy and its guard look (see `tests/README.md`):
    /// - units (transient ones too) get NixOS's `PATH`, systemd's own programs only
    ///   ([`SYSTEMD_ONLY_BIN`], through `DefaultEnvironment` in `system.conf.d`);
    /// - fake generations on its disk under [`HOST_STATE`]`/gens/<n>` (`bin/switch-to-configuration`
    ///   is the stand-in of `tests/fakes/`, `sw/bin` holds the coreutils the guard calls and the
    ///   `nix-env` stand-in); generation 1 is `/nix/var/nix/profiles/system` (`system-1-link`);
    /// - a boot loader: its default is the file [`HOST_STATE`]`/boot-default` (a generation
    ///   number), and the unit `fleetnix-test-stage2.service` points `/run/booted-system` and
    ///   `/run/current-system` at it at every boot, as NixOS's stage 2 does;
    /// - `tailscaled.service` and `omp-agent.service`, stand-in units that run a sleep, enabled.
    ///
    /// Healthy for the deploy's health gate: both units run and the catalog's TCP ports listen
    /// on its address ([`Net::listen`]).
    pub fn nixos_host(&mut self, name: &str) -> Host {
        let host = self.add_host(name, |disk| {
            // NixOS's unit PATH.
            for tool in ["systemctl", "systemd-run", "systemd-notify", "journalctl"] {
                symlink(
                    format!("/usr/bin/{tool}"),
                    &disk.join(&SYSTEMD_ONLY_BIN[1..]).join(tool),
                );
            }
            write(
                &disk.join("etc/systemd/system.conf.d/fleetnix-nixos-path.conf"),
                &format!("[Manager]\nDefaultEnvironment=PATH={SYSTEMD_ONLY_BIN}\n"),
            );
            os_release(disk);
            // Generation 1, the profile, the boot default.
            let state = disk.join(&HOST_STATE[1..]);
            let gen1 = state.join("gens/1");
            std::fs::create_dir_all(gen1.join("bin")).expect("gens");
            std::fs::copy(
                fakes().join("switch-to-configuration"),
                gen1.join("bin/switch-to-configuration"),
            )
            .expect("switch-to-configuration stand-in");
            std::fs::create_dir_all(gen1.join("sw/bin")).expect("sw/bin");
            std::fs::copy(fakes().join("nix-env"), gen1.join("sw/bin/nix-env"))
                .expect("nix-env stand-in");
            for tool in ["mkdir", "rm", "touch", "ln", "mv", "cat", "readlink"] {
                symlink(format!("/usr/bin/{tool}"), &gen1.join("sw/bin").join(tool));
            }
            write(&state.join("boot-default"), "1\n");
            let profiles = disk.join("nix/var/nix/profiles");
            symlink(format!("{HOST_STATE}/gens/1"), &profiles.join("system-1-link"));
            symlink("system-1-link", &profiles.join("system"));
            write(&profiles.join(".fleetnix-test-host"), HOST_STATE);
            // The boot loader's part of stage 2: the booted generation is the boot default.
            let stage2 = format!("{HOST_STATE}/stage2");
            write(
                &disk.join(&stage2[1..]),
                &format!(
                    "#!/bin/sh\n# Stand-in of NixOS stage 2 (tests/README.md): /run/booted-system and\n\
                     # /run/current-system are the generation the boot loader started.\n\
                     set -eu\nread -r n < {HOST_STATE}/boot-default\n\
                     /usr/bin/ln -sfn {HOST_STATE}/gens/$n /run/booted-system\n\
                     /usr/bin/ln -sfn {HOST_STATE}/gens/$n /run/current-system\n"
                ),
            );
            chmod(&disk.join(&stage2[1..]), 0o755);
            let units = disk.join("etc/systemd/system");
            write(
                &units.join("fleetnix-test-stage2.service"),
                &format!(
                    "[Unit]\nDescription=NixOS stage 2 stand-in: /run/current-system = the boot default\n\
                     DefaultDependencies=no\nAfter=local-fs.target\nBefore=sysinit.target\n\
                     [Service]\nType=oneshot\nRemainAfterExit=yes\nExecStart={stage2}\n\
                     [Install]\nWantedBy=sysinit.target\n"
                ),
            );
            symlink(
                "../fleetnix-test-stage2.service",
                &units.join("sysinit.target.wants/fleetnix-test-stage2.service"),
            );
            for unit in fleetnix::deploy::gate::UNITS {
                write(
                    &units.join(unit),
                    "[Unit]\nDescription=fleetnix test stand-in of a long-running daemon\n\
                     [Service]\nExecStart=/usr/bin/sleep infinity\n[Install]\nWantedBy=multi-user.target\n",
                );
                symlink(
                    format!("../{unit}"),
                    &units.join("multi-user.target.wants").join(unit),
                );
            }
        });
        self.net.listen(&host, &super::catalog_tcp_ports());
        host
    }

    /// The host's disk (the overlay's upper layer: what the host wrote, as a directory for `/`).
    /// Only to read once the host is gone: while it runs, overlayfs does not promise that
    /// changes made here are seen inside (it caches lookups); use [`SystemdNet::root`].
    pub fn disk(&self, host: &Host) -> PathBuf {
        self.machine(host).disk.clone()
    }

    /// The running host's `/` as this machine sees it (`/proc/<its PID 1>/root`): files written
    /// here are written through its overlay, as a program on the host would. Valid until the
    /// host reboots.
    pub fn root(&self, host: &Host) -> PathBuf {
        PathBuf::from(format!("/proc/{}/root", self.leader(host)))
    }

    /// The test state of a running host made by [`SystemdNet::nixos_host`] ([`HOST_STATE`]:
    /// `activations`, `boot-default`, `gens/`, the stand-ins' knobs), through [`SystemdNet::root`].
    pub fn state(&self, host: &Host) -> PathBuf {
        self.root(host).join(&HOST_STATE[1..])
    }

    /// Boots so far (1 after [`SystemdNet::add_host`], one more per reboot).
    pub fn boots(&self, host: &Host) -> u32 {
        self.machine(host).boots.load(Ordering::SeqCst)
    }

    /// Time from each nspawn start until the host's sshd accepted a connection, in order.
    pub fn boot_times(&self, host: &Host) -> Vec<Duration> {
        self.machine(host).boot_times.clone()
    }

    /// The container's PID 1 (a real systemd), as this machine sees it.
    pub fn leader(&self, host: &Host) -> u32 {
        super::poll(Duration::from_secs(10), || leader_in(&host.ns))
            .unwrap_or_else(|| panic!("no systemd runs in {}", host.name))
    }

    /// Runs `/bin/sh -c script` inside the host (all its namespaces, as its root), with
    /// Debian's root PATH and nothing else of the test's environment: the console, without SSH.
    pub fn exec(&self, host: &Host, script: &str) -> Ran {
        Ran::of(
            Command::new("nsenter")
                .arg("-t")
                .arg(self.leader(host).to_string())
                .args(["-a", "/bin/sh", "-c", script])
                .env_clear()
                .env("PATH", "/usr/sbin:/usr/bin:/sbin:/bin")
                .stdin(Stdio::null()),
        )
    }

    /// [`SystemdNet::exec`] that must succeed; its standard output.
    pub fn exec_ok(&self, host: &Host, script: &str) -> String {
        let r = self.exec(host, script);
        assert_eq!(r.code, Some(0), "on {}: {script}\n{r}", host.name);
        r.stdout
    }

    /// The target of a symlink inside the host (e.g. `/run/current-system`), or `None`.
    pub fn readlink(&self, host: &Host, path: &str) -> Option<String> {
        let p = PathBuf::from(format!("/proc/{}/root{path}", self.leader(host)));
        std::fs::read_link(p).ok().map(|t| t.display().to_string())
    }

    /// Reboots the host for real (`systemctl reboot` inside) and returns once it booted again
    /// and its sshd accepts connections.
    pub fn reboot(&mut self, host: &Host) {
        let before = self.boots(host);
        let started = Instant::now();
        let r = self.exec(host, "systemctl reboot");
        assert_eq!(r.code, Some(0), "systemctl reboot on {}: {r}", host.name);
        self.wait_for_reboot(host, before, started);
    }

    /// Fault: the host loses power (its PID 1 and with it every process of the container is
    /// killed: no shutdown, no unit stops) and is switched on again; returns once it booted
    /// and its sshd accepts connections. The disk keeps what was written; `/run` is new.
    pub fn power_cycle(&mut self, host: &Host) {
        let before = self.boots(host);
        let leader = self.leader(host);
        self.machine(host).power_on.store(true, Ordering::SeqCst);
        let started = Instant::now();
        kill(leader, rustix::process::Signal::KILL);
        self.wait_for_reboot(host, before, started);
    }

    /// Waits until the host has booted more than `before` times (a reboot started inside it,
    /// e.g. by a deploy) and its sshd accepts connections again.
    pub fn wait_for_reboot(&mut self, host: &Host, before: u32, since: Instant) {
        let boots = self.machine(host).boots.clone();
        wait_for(&format!("{} to boot again", host.name), BOOT_LIMIT, || {
            boots.load(Ordering::SeqCst) > before
        });
        self.wait_for_sshd(host, since);
    }

    /// `systemctl is-system-running --wait` inside: `running` when the boot finished with no
    /// failed unit.
    pub fn system_state(&self, host: &Host) -> String {
        self.exec(host, "systemctl is-system-running --wait")
            .stdout
            .trim()
            .to_string()
    }
}

/// NixOS's `/etc/os-release` (what fleetnix's `os: auto` detection reads).
fn os_release(disk: &Path) {
    let etc = disk.join("etc");
    // Debian's /etc/os-release is a link into /usr/lib: replace it on this host's disk.
    write(
        &etc.join("os-release"),
        "NAME=NixOS\nID=nixos\nPRETTY_NAME=\"NixOS (fleetnix test host)\"\n",
    );
}

impl Drop for SystemdNet {
    fn drop(&mut self) {
        for m in &mut self.machines {
            // Shown with a failing test's output (and with --nocapture): the boots' figures.
            eprintln!(
                "systemd host {}: {} boot(s), each until sshd listened: {:?}",
                m.host.name,
                m.boots.load(Ordering::SeqCst),
                m.boot_times
            );
            m.stop.store(true, Ordering::SeqCst);
            // Killing the container's PID 1 ends its whole pid namespace; nspawn then exits
            // and unmounts its overlay (and the supervisor, seeing `stop`, boots no more).
            // nspawn itself is killed if it lingers.
            let Some(t) = m.supervisor.take() else {
                continue;
            };
            let started = Instant::now();
            while !t.is_finished() {
                if let Some(pid) = leader_in(&m.host.ns) {
                    kill(pid, rustix::process::Signal::KILL);
                }
                if started.elapsed() > Duration::from_secs(10) {
                    kill(
                        m.nspawn_pid.load(Ordering::SeqCst),
                        rustix::process::Signal::KILL,
                    );
                }
                std::thread::sleep(Duration::from_millis(20));
            }
            let _ = t.join();
            let _ = std::fs::remove_dir_all(
                Path::new("/run/systemd/nspawn/propagate").join(&m.machine),
            );
        }
    }
}

/// The test fleet's hosts by name.
impl SystemdNet {
    /// The host named `name`.
    pub fn host(&self, name: &str) -> Host {
        self.machines
            .iter()
            .find(|m| m.host.name == name)
            .map(|m| m.host.clone())
            .unwrap_or_else(|| panic!("no systemd host {name}"))
    }

    /// Whether `path` exists inside the host (in its own `/run`, say).
    pub fn exists(&self, host: &Host, path: &str) -> bool {
        Path::new(&format!("/proc/{}/root{path}", self.leader(host))).exists()
    }

    /// The `activations` the `switch-to-configuration` stand-in recorded on a NixOS-like host
    /// (`<n> <action>` lines).
    pub fn activations(&self, host: &Host) -> Vec<String> {
        super::lines(&self.state(host).join("activations"))
    }

    /// What a NixOS-like host runs (`/run/current-system`), its profile
    /// (`/nix/var/nix/profiles/system`) and its boot loader's default, as generation numbers.
    pub fn generations(&self, host: &Host) -> (String, String, String) {
        let number = |p: &str| p.rsplit('/').next().unwrap_or_default().to_string();
        let running = number(
            &self
                .readlink(host, "/run/current-system")
                .unwrap_or_else(|| panic!("{}: no /run/current-system", host.name)),
        );
        let profiles = self.root(host).join("nix/var/nix/profiles");
        let link = std::fs::read_link(profiles.join("system")).expect("profile");
        let profile = number(
            &std::fs::read_link(profiles.join(link))
                .expect("profile generation")
                .display()
                .to_string(),
        );
        let boot = std::fs::read_to_string(self.state(host).join("boot-default"))
            .expect("boot-default")
            .trim()
            .to_string();
        (running, profile, boot)
    }

    /// The host's journal since its boot, messages only (`journalctl -b -o cat ARGS`).
    pub fn journal(&self, host: &Host, args: &str) -> String {
        self.exec_ok(host, &format!("journalctl -b --no-pager -o cat {args}"))
    }

    /// `count` NixOS-like hosts ([`SystemdNet::nixos_host`]) named `n1`…`n<count>`, pinned to
    /// their keys, in a fleet under `root` with node timeout `timeout` seconds; `n1` is the
    /// control plane (it hosts the catalog's services).
    pub fn nixos_fleet(&mut self, root: &Path, count: usize, timeout: u32) -> Vec<Host> {
        let hosts: Vec<Host> = (1..=count)
            .map(|i| self.nixos_host(&format!("n{i}")))
            .collect();
        let specs: Vec<super::NodeSpec> = hosts.iter().map(super::NodeSpec::for_host).collect();
        super::write_fleet(root, &specs, timeout, false);
        hosts
    }

    /// Each of `nodes` was never started because the rollout halted (its row says
    /// `skipped (halted)` and names `why`), and nothing reached it: the fake nixos-rebuild never
    /// ran for it and its `switch-to-configuration` never ran.
    pub fn assert_halted(&self, r: &Ran, root: &Path, nodes: &[&str], why: &str) {
        for n in nodes {
            let row = r.row(n);
            assert!(
                row.contains("skipped (halted)") && row.contains(why),
                "{n} not halted by {why}: {row}\n{r}"
            );
            assert!(
                !root.join(format!("rec/nixos-rebuild.{n}.argv")).exists(),
                "{n} was touched"
            );
            assert!(
                self.activations(&self.host(n)).is_empty(),
                "{n} was activated"
            );
        }
    }
}

/// The path of a NixOS-like host's fake generation `n`, as the host reports it.
pub fn gen_path(n: u32) -> String {
    format!("{HOST_STATE}/gens/{n}")
}
