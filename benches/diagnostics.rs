//! Benchmark: a `nodes.yml` with one 1 MB line holding 4 problems (issue 21 finding 10).
//! Prints the time to find the problems and cut their source snippets, and the bytes of source
//! shown against the whole line per problem (what diagnostics printed before). Target: < 1 s.

use fleetnix::manifest::{self, FleetTexts, ManifestError};
use fleetnix::model::SourceFiles;
use std::path::PathBuf;
use std::time::Instant;

fn main() {
    let repo = PathBuf::from(env!("CARGO_MANIFEST_DIR"));
    let read =
        |f: &str| std::fs::read_to_string(repo.join("fleet").join(f)).expect("example fleet");
    let mut nodes = read("nodes.yml");
    let pad = "x".repeat(1 << 20);
    let line = format!(
        "  - {{name: w3, tailscale_ip: 100.64.0.99, roles: [glm-worker], resources: {{cpu: 2, ram_gb: 4}}, bogus1: \"{pad}\", bogus2: 2, os: windows, ssh_user: \"a b\"}}\n"
    );
    nodes.push_str(&line);
    let texts = FleetTexts {
        paths: SourceFiles {
            nodes: "fleet/nodes.yml".into(),
            fleet: "fleet/fleet.yml".into(),
            services: "fleet/services.yml".into(),
        },
        nodes,
        fleet: read("fleet.yml"),
        services: read("services.yml"),
    };
    let start = Instant::now();
    let Err(ManifestError::Invalid { problems, sources }) = manifest::parse(&texts) else {
        panic!("the fleet has problems");
    };
    let found = start.elapsed();
    let mut shown = 0usize;
    for p in &problems {
        let text = &sources
            .iter()
            .find(|(f, _)| *f == p.file)
            .expect("source")
            .1;
        shown += p.snippet(text).text.len() + p.to_string().len();
    }
    let total = start.elapsed();
    let before = problems.len() * line.len();
    println!(
        "diagnostics bench: a {} byte line, {} problems",
        line.len(),
        problems.len()
    );
    println!("  find problems {:>8.3} s", found.as_secs_f64());
    println!("  snippets      {:>8.3} s", (total - found).as_secs_f64());
    println!(
        "  total         {:>8.3} s  (target < 1 s: ratio {:.3})",
        total.as_secs_f64(),
        total.as_secs_f64()
    );
    println!(
        "  source shown  {shown:>8} bytes (whole line per problem: {before} bytes; ratio {:.5})",
        shown as f64 / before as f64
    );
}
