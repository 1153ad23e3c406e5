//! A node on an IPv6 tailnet address (`fd7a:115c:a1e0::/48`) is deployed for real: the
//! namespace host's sshd listens on its IPv6 address, fleetnix's ssh destination is
//! `root@fd7a:…` (OpenSSH refuses `root@[fd7a:…]`), the host key is pinned for that address,
//! and the real nixos-rebuild builds, copies and activates over it (issue 21 finding 1).

mod common;

use common::deploy::RealFleet;
use common::rebuild_ng::{activations, set_generation};
use common::*;

#[test]
fn a_node_on_an_ipv6_tailnet_address_is_deployed_with_a_guarded_switch() {
    let Some(f) = RealFleet::with(&["a", "b"], |hosts, specs| {
        specs[1].addr = hosts[1].addr6.to_string();
    }) else {
        return;
    };
    let b = &f.hosts[1];
    assert!(b.addr6.to_string().starts_with("fd7a:115c:a1e0::"));
    set_generation(f.root(), "2");
    let r = f.deploy(&["b", "--force"]);
    assert_eq!(r.code, Some(0), "{r}");
    assert!(r.row("b").contains("confirmed"), "{r}");
    assert_eq!(activations(&f.net, "b"), ["v2 test", "v2 boot"]);
    // The pin names the IPv6 address as ssh looks it up (bare, port 22).
    let kh = f.root().join(".fleetnix/known_hosts/b");
    assert_eq!(
        std::fs::read_to_string(&kh).expect("known_hosts"),
        format!("{} {}\n", b.addr6, b.host_key)
    );
    // It reached b over IPv6: b's sshd logged logins from the hub's IPv6 address.
    let log = std::fs::read_to_string(b.dir.join("sshd.log")).expect("sshd log");
    assert!(
        log.contains("Accepted publickey for root from fd7a:115c:a1e0::fe"),
        "{log}"
    );
}

#[test]
fn the_ssh_destination_of_an_ipv6_node_is_bare() {
    let root = tempfile::tempdir().expect("root");
    write_fleet(
        root.path(),
        &[
            NodeSpec::new("cp", "100.64.0.1", &[]),
            NodeSpec::new("v6", "fd7a:115c:a1e0::7", &["glm-worker"]),
        ],
        5,
        false,
    );
    let r = Ran::of(
        std::process::Command::new(fleetnix_bin())
            .arg("--root")
            .arg(root.path())
            .args(["deploy", "v6", "--dry-run"])
            .env("FLEETNIX_TAILSCALE", ""),
    );
    assert!(
        r.stdout.contains("v6 (nixos, root@fd7a:115c:a1e0::7)"),
        "{r}"
    );
    assert!(!r.stdout.contains("@["), "no bracketed destination: {r}");
}
