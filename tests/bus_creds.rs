//! Bus credentials: layout, environment file round trip, keeping passwords across regeneration.

mod common;

use common::example_fleet;
use fleetnix::bus::{self, creds::BusCredentials};

#[test]
fn files_follow_the_layout_and_the_env_file_round_trips() {
    let plan = bus::server_plan(&example_fleet()).unwrap();
    let creds = BusCredentials::generate(&plan);
    let files = creds.files(&plan).unwrap();
    let layout: Vec<(&str, &str)> = files
        .iter()
        .map(|f| (f.file.as_str(), f.reader.as_str()))
        .collect();
    assert_eq!(
        layout,
        [
            (
                "secrets/control-01/nats-observer-password.age",
                "control-01"
            ),
            ("secrets/control-01/nats-password.age", "control-01"),
            (
                "secrets/control-01/nats-registry-password.age",
                "control-01"
            ),
            ("secrets/control-01/nats-router-password.age", "control-01"),
            ("secrets/control-01/nats-server-env.age", "control-01"),
            (
                "secrets/control-01/nats-supervisor-password.age",
                "control-01"
            ),
            ("secrets/worker-01/nats-password.age", "worker-01"),
            ("secrets/worker-02/nats-password.age", "worker-02"),
        ]
    );
    // Each node's file holds its own password only; the env file holds them all.
    for f in &files {
        if f.secret == "nats-password" {
            assert_eq!(&f.plaintext, creds.password(f.reader.as_str()).unwrap());
        }
    }
    let env = creds.server_env();
    // One line per node, and one per service.
    assert_eq!(env.expose().lines().count(), 7);
    for var in [
        "NATS_OBSERVER_PASSWORD=",
        "NATS_REGISTRY_PASSWORD=",
        "NATS_ROUTER_PASSWORD=",
        "NATS_SUPERVISOR_PASSWORD=",
    ] {
        assert!(env.expose().lines().any(|l| l.starts_with(var)), "{var}");
    }
    assert!(env
        .expose()
        .lines()
        .any(|l| l.starts_with("NATS_ROUTER_PASSWORD=")));
    let router = files
        .iter()
        .find(|f| f.secret == "nats-router-password")
        .unwrap();
    assert_eq!(&router.plaintext, creds.router_password().unwrap());
    // Sorted by variable (`NATS_OBSERVER_PASSWORD` before the nodes' `NATS_PASSWORD_<NODE>`).
    let vars: Vec<&str> = env
        .expose()
        .lines()
        .map(|l| l.split('=').next().unwrap())
        .collect();
    assert!(vars.windows(2).all(|w| w[0] < w[1]), "{vars:?}");
    assert!(env.expose().starts_with("NATS_OBSERVER_PASSWORD="));
    let back = BusCredentials::parse_server_env(&plan, env.expose()).unwrap();
    assert_eq!(back, creds);
    // Debug output never shows a password.
    let shown = format!("{creds:?} {files:?}");
    for u in &plan.users {
        assert!(!shown.contains(creds.password(u.user.as_str()).unwrap().expose()));
    }
}

#[test]
fn regenerating_keeps_existing_passwords_and_drops_departed_nodes() {
    let plan = bus::server_plan(&example_fleet()).unwrap();
    let full = BusCredentials::generate(&plan);
    // An env file that lacks worker-02 and still has a node that left the fleet.
    let env: String = full
        .server_env()
        .expose()
        .lines()
        .filter(|l| !l.starts_with("NATS_PASSWORD_WORKER_02="))
        .map(|l| format!("{l}\n"))
        .chain(["NATS_PASSWORD_OLD_NODE=Abcdefghijklmnop1234\n".to_string()])
        .collect();
    let mut creds = BusCredentials::parse_server_env(&plan, &env).unwrap();
    let added = creds.fill(&plan);
    // The services' passwords are read back and kept too.
    assert!(creds.fill_services().is_empty());
    assert_eq!(creds.router_password(), full.router_password());
    for s in fleetnix::bus::users::Service::ALL {
        assert_eq!(creds.service_password(s), full.service_password(s), "{s:?}");
    }
    assert_eq!(
        added.iter().map(|n| n.as_str()).collect::<Vec<_>>(),
        ["worker-02"]
    );
    assert_eq!(creds.password("worker-01"), full.password("worker-01"));
    assert_ne!(creds.password("worker-02"), full.password("worker-02"));
    assert!(creds.password("old-node").is_none());
    // A malformed value is refused without being repeated.
    let bad = "NATS_PASSWORD_WORKER_01=1secret with spaces\n";
    let e = BusCredentials::parse_server_env(&plan, bad).unwrap_err();
    assert!(e.0.contains("NATS_PASSWORD_WORKER_01") && !e.0.contains("secret with"));
}
