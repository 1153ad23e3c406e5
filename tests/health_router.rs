//! `fleetnix health` next to the router's view (issue 22 item 7): `bus::drain::health_all` reads
//! every `fleet-health` entry the real router process wrote for reference workers, as
//! `_observer` (which may read that bucket and nothing else), against a real nats-server on loopback; and the binary, run inside a namespace
//! test network with nats-server on the control plane's host, shows heartbeat age,
//! in-flight/capacity and draining next to its probes, or says why it cannot and still reports
//! the probes with the same exit code.

mod bus_support;
mod common;
mod health_common;

use bus_support::NatsServer;
use bytes::Bytes;
use fleetnix::bus::drain::{self, HealthEntries};
use fleetnix::bus::router::{self, AskOptions, HealthEntry};
use fleetnix::bus::users::Service;
use fleetnix::bus::worker::{self, TaskOutcome, WorkerHandle, WorkerOptions};
use fleetnix::model::{NodeName, Role};
use std::sync::Arc;
use std::time::Duration;

const LIMIT: Duration = Duration::from_secs(5);

/// A reference worker on `node` for `glm-worker` whose every task waits for a permit of `gate`.
async fn gated_worker(
    server: &NatsServer,
    node: &'static str,
    gate: Arc<tokio::sync::Semaphore>,
) -> WorkerHandle {
    let mut options = WorkerOptions::new(
        NodeName::parse(node).unwrap(),
        vec![Role::parse("glm-worker").unwrap()],
    );
    options.beat = Duration::from_millis(150);
    worker::start(server.connect(node).await, options, move |_task| {
        let gate = gate.clone();
        async move {
            let _permit = gate.acquire().await;
            TaskOutcome::Done(Bytes::from_static(br#"{"done": true}"#))
        }
    })
    .await
    .unwrap()
}

fn entry<'a>(all: &'a HealthEntries, node: &str) -> Option<&'a HealthEntry> {
    all.entries.iter().find(|e| e.node == node)
}

/// Reads `fleet-health` until `ok` holds (bounded), returning the last read.
async fn read_until(
    js: &async_nats::jetstream::Context,
    what: &str,
    ok: impl Fn(&HealthEntries) -> bool,
) -> HealthEntries {
    let got = common::poll_async(Duration::from_secs(10), || async {
        drain::health_all(js, LIMIT).await.ok().filter(|a| ok(a))
    })
    .await;
    match got {
        Some(a) => a,
        None => panic!(
            "fleet-health never showed {what}; last: {:?}",
            drain::health_all(js, LIMIT).await
        ),
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn health_all_reads_the_routers_view_with_a_drained_node() {
    let fleet = common::example_fleet();
    let server = NatsServer::start(&fleet);
    let registry = async_nats::jetstream::new(server.connect_registry().await);
    // `health` reads as `_observer`; `_registry` registers and drains.
    let observer = async_nats::jetstream::new(server.connect_service(Service::Observer).await);
    // No router ever ran: no bucket, which is no entry rather than an error.
    let none = drain::health_all(&observer, LIMIT).await.unwrap();
    assert_eq!(none, HealthEntries::default());
    fleetnix::bus::registry::sync(&registry, &fleet)
        .await
        .unwrap();
    let _router = server.router_process();
    let gate = Arc::new(tokio::sync::Semaphore::new(0));
    let _w1 = gated_worker(&server, "worker-01", gate.clone()).await;
    let _w2 = gated_worker(&server, "worker-02", gate.clone()).await;
    let healthy = |a: &HealthEntries| {
        ["worker-01", "worker-02"]
            .iter()
            .all(|n| entry(a, n).is_some_and(|e| e.state == "healthy"))
    };
    read_until(&observer, "both workers healthy", healthy).await;

    // One task that runs until the gate opens.
    let supervisor = server.connect_supervisor().await;
    let asked = tokio::spawn(async move {
        router::ask_with(
            &supervisor,
            &Role::parse("glm-worker").unwrap(),
            Bytes::from_static(b"{}"),
            &AskOptions::new(Duration::from_secs(30), Duration::from_secs(4)),
        )
        .await
        .unwrap()
    });
    let busy = read_until(&observer, "a task in flight", |a| {
        a.entries.iter().any(|e| e.in_flight == 1)
    })
    .await;
    let taker = busy
        .entries
        .iter()
        .find(|e| e.in_flight == 1)
        .unwrap()
        .node
        .clone();
    let other = if taker == "worker-01" {
        "worker-02"
    } else {
        "worker-01"
    };

    // Drained as `node drain` does: the router reports it draining, its task still in flight.
    drain::set(
        &registry,
        &NodeName::parse(&taker).unwrap(),
        true,
        "health test",
    )
    .await
    .unwrap();
    let all = read_until(&observer, "the taker draining", |a| {
        entry(a, &taker).is_some_and(|e| e.draining)
    })
    .await;
    // Every registered node, sorted, in one read.
    let names: Vec<&str> = all.entries.iter().map(|e| e.node.as_str()).collect();
    let mut want: Vec<&str> = fleet.nodes.iter().map(|n| n.name.as_str()).collect();
    want.sort_unstable();
    assert_eq!(names, want);
    assert!(all.unreadable.is_empty(), "{:?}", all.unreadable);
    let t = entry(&all, &taker).unwrap();
    assert_eq!((t.in_flight, t.capacity, t.draining), (1, 4, true), "{t:?}");
    assert!(t.last_heartbeat.is_some());
    let o = entry(&all, other).unwrap();
    assert_eq!(
        (o.in_flight, o.capacity, o.draining),
        (0, 4, false),
        "{o:?}"
    );
    assert_eq!(o.state, "healthy");
    // The control plane runs no agent here: never heard from, no load.
    let cp = entry(&all, "control-01").unwrap();
    assert_eq!((cp.last_heartbeat.as_deref(), cp.capacity), (None, 0));
    assert_ne!(cp.state, "healthy");

    // The task finishes on the drained node; it stays draining with nothing in flight.
    gate.add_permits(1);
    let answer = asked.await.unwrap();
    assert!(
        matches!(&answer, router::Answer::Done { node, .. } if *node == taker),
        "{answer:?}"
    );
    read_until(&observer, "the drained node idle", |a| {
        entry(a, &taker).is_some_and(|e| e.draining && e.in_flight == 0)
    })
    .await;

    // The observer only reads: it cannot undrain the node (the server refuses the request,
    // which then fails or times out: bounded here).
    let taker_name = NodeName::parse(&taker).unwrap();
    let undrain = drain::set(&observer, &taker_name, false, "");
    let refused = tokio::time::timeout(Duration::from_secs(3), undrain).await;
    assert!(
        !matches!(refused, Ok(Ok(()))),
        "the observer undrained a node"
    );
    let drained =
        fleetnix::bus::registry::open_bucket(&registry, fleetnix::bus::DRAIN_BUCKET, false)
            .await
            .unwrap();
    assert!(drained.get(&taker).await.unwrap().is_some(), "undrained");
}

/// A user that may not read `fleet-health` gets an error, within the bound, not a hang.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn health_all_is_bounded_for_a_user_without_the_right() {
    let fleet = common::example_fleet();
    let server = NatsServer::start(&fleet);
    let supervisor = async_nats::jetstream::new(server.connect_service(Service::Supervisor).await);
    let err = drain::health_all(&supervisor, Duration::from_millis(500))
        .await
        .unwrap_err();
    assert!(err.to_string().contains("fleet-health"), "{err}");
}

/// nats-server for `fleet` in the namespace `ns`, listening on `addr`:4222 (the fleet's
/// `nats_url`), with fresh passwords; killed on drop (and with the namespace).
struct NsNats {
    child: std::process::Child,
    creds: fleetnix::bus::creds::BusCredentials,
    _dir: tempfile::TempDir,
}

impl Drop for NsNats {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

fn nats_in(ns: &str, fleet: &fleetnix::model::Fleet, addr: std::net::IpAddr) -> NsNats {
    let dir = tempfile::tempdir().unwrap();
    let plan = fleetnix::bus::server_plan(fleet)
        .unwrap()
        .with_listen(addr, 4222)
        .with_store_dir(dir.path().join("jetstream").display().to_string());
    let creds = fleetnix::bus::creds::BusCredentials::generate(&plan);
    let conf = dir.path().join("nats.conf");
    std::fs::write(&conf, plan.to_conf()).unwrap();
    let mut cmd = std::process::Command::new("ip");
    cmd.args(["netns", "exec", ns])
        .arg(bus_support::nats_server_bin())
        .arg("-c")
        .arg(&conf)
        .env_clear()
        .stdin(std::process::Stdio::null())
        .stdout(std::process::Stdio::null())
        .stderr(std::process::Stdio::null());
    for (var, pw) in creds.env_pairs() {
        cmd.env(var, pw.expose());
    }
    let child = cmd.spawn().unwrap();
    NsNats {
        child,
        creds,
        _dir: dir,
    }
}

/// The end to end view: inside a namespace test network, nats-server on the control plane's
/// host (the fleet's own `nats_url`), `fleetnix router` and two reference workers in the hub;
/// `fleetnix health` there shows each node's heartbeat age, in-flight/capacity and draining, and
/// the router's state where it differs from the probes'. Then the same fleet with the bus out of
/// reach (refused, silent, no password): the probes' table and exit code, unchanged, and a note.
#[test]
fn health_shows_the_routers_view_and_copes_without_it() {
    use common::netns::{run_in, HostOptions, Net};
    use health_common::{tailnet, write_fleet, N};
    let Some(mut net) = Net::new() else { return };
    let bare = || HostOptions {
        no_sshd: true,
        ..Default::default()
    };
    let hosts = ["h0", "h1", "h2"].map(|h| net.add_host(h, bare()));
    let addr = |i: usize| hosts[i].addr.to_string();
    let tmp = tempfile::tempdir().unwrap();
    let dir = tmp.path().to_path_buf();
    let fleet = write_fleet(
        &dir,
        &[
            N::new("cp", &addr(0), &["control-plane"]),
            N::new("w1", &addr(1), &["gpu"]),
            N::new("w2", &addr(2), &["gpu"]),
            // Offline in the tailnet: down by the probes, so health exits 1 either way.
            N::new("w3", "100.64.0.9", &["gpu"]),
        ],
        &[("nats", 4222, "control-plane")],
        1,
        "round_robin",
    );
    let status = dir.join("status.json");
    std::fs::write(
        &status,
        serde_json::to_string(&tailnet(&fleet, &["cp", "w1", "w2"], &["w3"])).unwrap(),
    )
    .unwrap();
    let nats = nats_in(&hosts[0].ns, &fleet, hosts[0].addr.into());
    let url = fleet.settings.nats_url.to_string();
    let pw = |who: &str| nats.creds.password(who).unwrap().clone();
    let service_pw = |s: Service| nats.creds.service_password(s).unwrap().clone();
    let (router_pw, registry_pw, supervisor_pw, observer_pw) = (
        service_pw(Service::Router),
        service_pw(Service::Registry),
        service_pw(Service::Supervisor),
        service_pw(Service::Observer),
    );
    let (w1_pw, w2_pw) = (pw("w1"), pw("w2"));
    let closed_ntfy = format!("http://{}:1", hosts[0].addr);
    let hub = net.hub().to_string();
    let dir2 = dir.clone();
    // Everything that talks to the bus or the hosts runs in the hub (threads and child
    // processes started there stay there).
    let outputs = run_in(&hub, move || {
        let rt = tokio::runtime::Builder::new_multi_thread()
            .worker_threads(2)
            .enable_all()
            .build()
            .unwrap();
        rt.block_on(async move {
            let timeout = Duration::from_secs(5);
            let up = common::poll_async(Duration::from_secs(10), || async {
                fleetnix::bus::dispatch::connect_as(&url, "_registry", &registry_pw, timeout)
                    .await
                    .ok()
            })
            .await
            .expect("nats-server in h0 did not answer within 10 s");
            let registry = async_nats::jetstream::new(up);
            fleetnix::bus::registry::sync(&registry, &fleet)
                .await
                .unwrap();
            let _router = tokio::process::Command::new(common::fleetnix_bin())
                .arg("--root")
                .arg(&dir2)
                .arg("--fleet-dir")
                .arg(&dir2)
                .args(["router", "--node-timeout", "1s"])
                .env("FLEETNIX_NATS_PASSWORD", router_pw.expose())
                .env("FLEETNIX_NTFY_URL", &closed_ntfy)
                .env_remove("FLEETNIX_NATS_URL")
                .stderr(std::process::Stdio::null())
                .kill_on_drop(true)
                .spawn()
                .unwrap();
            let gate = Arc::new(tokio::sync::Semaphore::new(0));
            let mut workers = Vec::new();
            for (node, pw) in [("w1", &w1_pw), ("w2", &w2_pw)] {
                let name = NodeName::parse(node).unwrap();
                let client = fleetnix::bus::dispatch::connect(&url, &name, pw, timeout)
                    .await
                    .unwrap();
                let mut options = WorkerOptions::new(name, vec![Role::parse("gpu").unwrap()]);
                options.beat = Duration::from_millis(150);
                let gate = gate.clone();
                workers.push(
                    worker::start(client, options, move |_task| {
                        let gate = gate.clone();
                        async move {
                            let _permit = gate.acquire().await;
                            TaskOutcome::Done(Bytes::from_static(b"{}"))
                        }
                    })
                    .await
                    .unwrap(),
                );
            }
            read_until(&registry, "both workers healthy", |a| {
                ["w1", "w2"]
                    .iter()
                    .all(|n| entry(a, n).is_some_and(|e| e.state == "healthy"))
            })
            .await;
            // w1 drained; one task in flight on w2.
            drain::set(&registry, &NodeName::parse("w1").unwrap(), true, "test")
                .await
                .unwrap();
            read_until(&registry, "w1 draining", |a| {
                entry(a, "w1").is_some_and(|e| e.draining)
            })
            .await;
            let supervisor =
                fleetnix::bus::dispatch::connect_as(&url, "_supervisor", &supervisor_pw, timeout)
                    .await
                    .unwrap();
            let asked = tokio::spawn(async move {
                router::ask_with(
                    &supervisor,
                    &Role::parse("gpu").unwrap(),
                    Bytes::from_static(b"{}"),
                    &AskOptions::new(Duration::from_secs(30), Duration::from_secs(4)),
                )
                .await
                .unwrap()
            });
            read_until(&registry, "w2 busy", |a| {
                entry(a, "w2").is_some_and(|e| e.in_flight == 1)
            })
            .await;

            let health = |args: &[&str], password: Option<&fleetnix::secret::Secret>| {
                let mut cmd = std::process::Command::new(common::fleetnix_bin());
                cmd.arg("--root")
                    .arg(&dir2)
                    .arg("--fleet-dir")
                    .arg(&dir2)
                    .arg("health")
                    .args(args)
                    .env("FLEETNIX_TAILSCALE", common::fake_tailscale())
                    .env("FAKE_TAILSCALE_STATUS", &status)
                    .env("NO_COLOR", "1")
                    .env_remove("FLEETNIX_NATS_URL")
                    .env_remove("FLEETNIX_NATS_PASSWORD");
                if let Some(p) = password {
                    cmd.env("FLEETNIX_NATS_PASSWORD", p.expose());
                }
                cmd.output().unwrap()
            };
            let mut out = vec![
                health(&["--json"], Some(&observer_pw)),
                health(&[], Some(&observer_pw)),
                health(&["--no-bus"], None),
                // Refused: nothing listens on the hub's port 1.
                health(&["--nats-url", "nats://100.64.0.254:1"], Some(&observer_pw)),
                health(
                    &["--json", "--nats-url", "nats://100.64.0.254:1"],
                    Some(&observer_pw),
                ),
                // No password anywhere.
                health(&["--identity", "/nonexistent/id_ed25519"], None),
            ];
            // Silent: connects hang (the node timeout bounds them).
            let silent = health_common::silent_listener("100.64.0.254".parse().unwrap(), 0);
            let silent_url = format!("nats://{}", silent.addr);
            out.push(health(&["--nats-url", &silent_url], Some(&observer_pw)));
            // A watch of two sweeps, connected once.
            out.push(health(
                &["--watch", "--interval", "100ms", "--count", "2", "--json"],
                Some(&observer_pw),
            ));
            gate.add_permits(1);
            asked.await.unwrap();
            drop(workers);
            out
        })
    });
    drop(nats);
    let text = |o: &std::process::Output| String::from_utf8_lossy(&o.stdout).to_string();
    let err = |o: &std::process::Output| String::from_utf8_lossy(&o.stderr).to_string();

    // JSON: the router's view per node.
    let json = &outputs[0];
    assert_eq!(json.status.code(), Some(1), "{}{}", text(json), err(json));
    let v: serde_json::Value = serde_json::from_slice(&json.stdout).unwrap();
    assert_eq!(v["router_view"]["status"], "read", "{v:#}");
    let node = |n: &str| {
        v["nodes"]
            .as_array()
            .unwrap()
            .iter()
            .find(|x| x["name"] == n)
            .unwrap()
            .clone()
    };
    let (cp, w1, w2) = (node("cp"), node("w1"), node("w2"));
    assert_eq!(cp["state"], "healthy", "the probes: nats answers");
    assert_ne!(cp["router"]["state"], "healthy", "no agent on cp: {cp:#}");
    assert_eq!(cp["router"]["last_heartbeat"], serde_json::Value::Null);
    assert_eq!(w1["router"]["draining"], true, "{w1:#}");
    assert_eq!(w1["router"]["in_flight"], 0);
    assert_eq!(w1["router"]["capacity"], 4);
    assert!(w1["router"]["heartbeat_age_ms"].is_u64(), "{w1:#}");
    assert_eq!(w2["router"]["draining"], false, "{w2:#}");
    assert_eq!(w2["router"]["in_flight"], 1);

    // The table: HEARTBEAT, TASKS, DRAINING; the router's state where it disagrees.
    let table = text(&outputs[1]);
    assert_eq!(outputs[1].status.code(), Some(1), "{table}");
    let row = |t: &str, n: &str| {
        t.lines()
            .find(|l| l.split_whitespace().next() == Some(n))
            .unwrap_or_else(|| panic!("no row {n}: {t}"))
            .to_string()
    };
    assert!(
        table
            .lines()
            .next()
            .unwrap()
            .contains("HEARTBEAT  TASKS  DRAINING  DETAIL"),
        "{table}"
    );
    let r1: Vec<String> = row(&table, "w1")
        .split_whitespace()
        .map(str::to_string)
        .collect();
    assert!(r1[4].ends_with('s') && r1[5] == "ago", "{table}");
    assert_eq!((r1[6].as_str(), r1[7].as_str()), ("0/4", "yes"), "{table}");
    let r2: Vec<String> = row(&table, "w2")
        .split_whitespace()
        .map(str::to_string)
        .collect();
    assert_eq!((r2[6].as_str(), r2[7].as_str()), ("1/4", "—"), "{table}");
    assert!(row(&table, "w3").contains(" down "), "{table}");
    let rcp = row(&table, "cp");
    assert!(
        rcp.contains(" never ") && rcp.contains("; router: "),
        "{table}"
    );
    assert!(!row(&table, "w1").contains("router:"), "{table}");
    assert!(err(&outputs[1]).is_empty(), "{}", err(&outputs[1]));

    // Without the bus: the probes' own table and exit code, and one note saying why.
    let probes_only = &outputs[2];
    assert_eq!(probes_only.status.code(), Some(1));
    assert!(err(probes_only).is_empty(), "{}", err(probes_only));
    for (o, why) in [
        (
            &outputs[3],
            "cannot connect to NATS at nats://100.64.0.254:1 as _observer",
        ),
        (&outputs[5], "no NATS password for _observer"),
        (&outputs[6], "_observer"),
    ] {
        assert_eq!(text(o), text(probes_only), "{}", err(o));
        assert_eq!(o.status.code(), probes_only.status.code());
        let e = err(o);
        assert_eq!(e.lines().count(), 1, "{e}");
        assert!(
            e.starts_with("note: the router's view is missing (probes only): ") && e.contains(why),
            "{e}"
        );
    }
    let missing: serde_json::Value = serde_json::from_slice(&outputs[4].stdout).unwrap();
    assert_eq!(missing["router_view"]["status"], "missing");
    assert!(missing["nodes"]
        .as_array()
        .unwrap()
        .iter()
        .all(|n| n["router"].is_null()));
    assert_eq!(outputs[4].status.code(), Some(1));

    // The watch reads the view on every sweep.
    let watch = &outputs[7];
    assert_eq!(watch.status.code(), Some(0), "{}", err(watch));
    let sweeps: Vec<serde_json::Value> = text(watch)
        .lines()
        .map(|l| serde_json::from_str(l).unwrap())
        .collect();
    assert_eq!(sweeps.len(), 2);
    for s in &sweeps {
        assert_eq!(s["router_view"]["status"], "read", "{s}");
    }
}
