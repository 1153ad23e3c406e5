//! Render and check the policy for fleets of growing size; prints timings and the ratio between sizes.

use fleetnix::acl::check;
use fleetnix::manifest::{self, FleetTexts};
use fleetnix::model::SourceFiles;
use std::path::{Path, PathBuf};
use std::time::Instant;

fn fleet_of(n: usize) -> fleetnix::model::Fleet {
    let dir = Path::new(env!("CARGO_MANIFEST_DIR")).join("fleet");
    let read = |f: &str| std::fs::read_to_string(dir.join(f)).expect("example fleet file");
    let mut nodes = String::from("nodes:\n");
    nodes.push_str("  - name: control-01\n    tailscale_ip: 100.64.0.1\n    roles: [control-plane, litellm-proxy, temporal, langfuse]\n    resources: {cpu: 8, ram_gb: 16}\n");
    for i in 1..n {
        nodes.push_str(&format!(
            "  - name: worker-{i:04}\n    tailscale_ip: 100.64.{}.{}\n    roles: [glm-worker, kg-writer]\n    resources: {{cpu: 4, ram_gb: 8}}\n",
            1 + i / 250,
            1 + i % 250
        ));
    }
    let texts = FleetTexts {
        paths: SourceFiles {
            nodes: PathBuf::from("nodes.yml"),
            fleet: PathBuf::from("fleet.yml"),
            services: PathBuf::from("services.yml"),
        },
        nodes,
        fleet: read("fleet.yml"),
        services: read("services.yml"),
    };
    manifest::parse(&texts).expect("generated fleet is valid")
}

fn main() {
    let seed = std::fs::read_to_string(
        Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/fixtures/seed-acl-policy.hujson"),
    )
    .expect("seed fixture");
    let mut prev: Option<(usize, f64)> = None;
    for n in [3usize, 30, 300] {
        let fleet = fleet_of(n);
        let reps = if n > 100 { 3 } else { 20 };
        let t = Instant::now();
        let mut text = String::new();
        for _ in 0..reps {
            text = fleetnix::acl::render::render(&fleet, "bench").text;
        }
        let render_ms = t.elapsed().as_secs_f64() * 1000.0 / reps as f64;
        let t = Instant::now();
        let mut findings = 0;
        for _ in 0..reps {
            findings = check::check(&fleet, &seed).expect("seed parses").len();
        }
        let check_ms = t.elapsed().as_secs_f64() * 1000.0 / reps as f64;
        let clean = check::check(&fleet, &text)
            .expect("rendered parses")
            .is_empty();
        let ratio = prev
            .map(|(pn, pms)| format!(", check time x{:.1} for x{} nodes", check_ms / pms, n / pn))
            .unwrap_or_default();
        println!(
            "{n:>4} nodes: render {render_ms:8.2} ms, check(seed) {check_ms:8.2} ms ({findings} findings), rendered clean: {clean}{ratio}"
        );
        prev = Some((n, check_ms));
    }
}
