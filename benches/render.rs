//! Benchmark: validate, plan and render a generated 10,000-node manifest.
//! Prints wall time and peak memory (VmHWM). Target: < 1 s and < 200 MB on 2 cores.

use fleetnix::manifest::{self, FleetTexts};
use fleetnix::model::SourceFiles;
use fleetnix::{outputs, spec};
use std::fmt::Write;
use std::path::PathBuf;
use std::time::Instant;

fn generated_nodes(n: usize) -> String {
    let mut s = String::from("nodes:\n  - name: control-01\n    tailscale_ip: 100.64.0.1\n    roles: [control-plane, litellm-proxy, temporal, langfuse]\n    resources:\n      cpu: 8\n      ram_gb: 16\n");
    let roles = [
        "[glm-worker, kg-writer]",
        "[glm-worker, mnemopi-replica]",
        "[kg-writer]",
    ];
    for i in 0..n - 1 {
        let ip = 2 + i as u32;
        let _ = write!(
            s,
            "  - name: worker-{i:05}\n    tailscale_ip: 100.{}.{}.{}\n    roles: {}\n    resources:\n      cpu: 4\n      ram_gb: 8\n",
            64 + (ip >> 16),
            (ip >> 8) & 255,
            ip & 255,
            roles[i % 3]
        );
    }
    s
}

fn peak_rss_mb() -> f64 {
    std::fs::read_to_string("/proc/self/status")
        .ok()
        .and_then(|s| {
            s.lines().find(|l| l.starts_with("VmHWM:")).map(|l| {
                l.split_whitespace()
                    .nth(1)
                    .unwrap_or("0")
                    .parse::<f64>()
                    .unwrap_or(0.0)
            })
        })
        .unwrap_or(0.0)
        / 1024.0
}

fn main() {
    let n = 10_000;
    let repo = PathBuf::from(env!("CARGO_MANIFEST_DIR"));
    let texts = FleetTexts {
        paths: SourceFiles {
            nodes: "fleet/nodes.yml".into(),
            fleet: "fleet/fleet.yml".into(),
            services: "fleet/services.yml".into(),
        },
        nodes: generated_nodes(n),
        fleet: std::fs::read_to_string(repo.join("fleet/fleet.yml")).unwrap(),
        services: std::fs::read_to_string(repo.join("fleet/services.yml")).unwrap(),
    };
    let start = Instant::now();
    let fleet = manifest::parse(&texts).expect("generated fleet is valid");
    let validated = start.elapsed();
    let plans = spec::node_specs(&fleet);
    let files = outputs::render_fleet(&fleet, &plans, "fleet/nodes.yml").unwrap();
    let total = start.elapsed();
    assert_eq!(files.len(), n + 1);
    println!("render bench: {n} nodes");
    println!("  validate   {:>8.3} s", validated.as_secs_f64());
    println!("  plan+render{:>8.3} s", (total - validated).as_secs_f64());
    println!(
        "  total      {:>8.3} s  (target < 1 s: ratio {:.2})",
        total.as_secs_f64(),
        total.as_secs_f64() / 1.0
    );
    println!(
        "  peak RSS   {:>8.1} MB (target < 200 MB: ratio {:.2})",
        peak_rss_mb(),
        peak_rss_mb() / 200.0
    );
}
