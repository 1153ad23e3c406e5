//! A stable-toolchain fuzz driver: mutates the seed corpus in a loop and runs a target on each
//! input, in process. No coverage feedback (that is `fuzz-afl`'s job); used as CI's smoke test
//! and to replay crash files.
//!
//! ```text
//! fuzz-loop TARGET|all [--seconds N] [--runs N] [--seed N] [--corpus DIR]
//! fuzz-loop TARGET --replay FILE…
//! ```
//!
//! A panic saves the input to `fuzz/artifacts/TARGET/crash-<hash>` and exits non-zero; an input
//! that takes more than one second of CPU time is saved as `slow-<hash>` and fails the run too.

use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

const SLOW: Duration = Duration::from_secs(1);
const MAX_LEN: usize = 64 * 1024;

/// Tokens that matter to the parsers, spliced in by the mutator.
const DICT: &[&str] = &[
    "\n",
    "\0",
    ": ",
    "- ",
    "[",
    "]",
    "{",
    "}",
    ",",
    "\"",
    "'",
    "#",
    "&a ",
    "*a",
    "!!str ",
    "|\n",
    ">-\n",
    "---\n",
    "...\n",
    "? ",
    "~",
    "null",
    "true",
    "0x",
    "-1",
    "1e999",
    "\\u0000",
    "\\",
    "//",
    "/*",
    "*/",
    "\t",
    "\r\n",
    "\u{feff}",
    "\u{2028}",
    "é",
    "nodes:",
    "name: ",
    "roles: ",
    "tailscale_ip: ",
    "100.64.0.1",
    "fd7a:115c:a1e0::1",
    "host_key: ",
    "tag:",
    "group:",
    "autogroup:member",
    "*:*",
    ":22",
    "\"acls\"",
    "\"grants\"",
    "\"ssh\"",
    "\"tests\"",
    "\"tagOwners\"",
    "\"Peer\"",
    "\"Self\"",
    "\"TailscaleIPs\"",
    "\"message\"",
    "\"data\"",
    "\"errors\"",
    "\"key\"",
    "\"id\"",
    "\"files\"",
    "\"version\"",
    "\"sha256\"",
    "\"recipients\"",
];

fn usage() -> ! {
    let names: Vec<&str> = fleetnix_fuzz::TARGETS.iter().map(|(n, _)| *n).collect();
    eprintln!(
        "usage: fuzz-loop TARGET|all [--seconds N] [--runs N] [--seed N] [--corpus DIR] [--replay FILE…]\ntargets: {}",
        names.join(", ")
    );
    std::process::exit(2)
}

struct Opts {
    targets: Vec<(&'static str, fleetnix_fuzz::Target)>,
    seconds: Option<f64>,
    runs: Option<u64>,
    seed: u64,
    corpus: PathBuf,
    replay: Vec<PathBuf>,
}

fn parse_args() -> Opts {
    let mut args = std::env::args().skip(1);
    let name = args.next().unwrap_or_else(|| usage());
    let targets: Vec<_> = if name == "all" {
        fleetnix_fuzz::TARGETS.to_vec()
    } else {
        match fleetnix_fuzz::TARGETS.iter().find(|(n, _)| *n == name) {
            Some(t) => vec![*t],
            None => usage(),
        }
    };
    let here = Path::new(env!("CARGO_MANIFEST_DIR"));
    let mut o = Opts {
        targets,
        seconds: None,
        runs: None,
        seed: 0x5eed,
        corpus: here.join("corpus"),
        replay: vec![],
    };
    while let Some(a) = args.next() {
        let mut val = || args.next().unwrap_or_else(|| usage());
        match a.as_str() {
            "--seconds" => o.seconds = Some(val().parse().unwrap_or_else(|_| usage())),
            "--runs" => o.runs = Some(val().parse().unwrap_or_else(|_| usage())),
            "--seed" => o.seed = val().parse().unwrap_or_else(|_| usage()),
            "--corpus" => o.corpus = PathBuf::from(val()),
            "--replay" => {
                o.replay.extend(args.by_ref().map(PathBuf::from));
            }
            _ => usage(),
        }
    }
    if o.seconds.is_none() && o.runs.is_none() {
        o.seconds = Some(10.0);
    }
    o
}

/// The corpus holds no key-shaped text: `@FAKE_AUTHKEY@` in a seed becomes an obviously fake
/// auth key, assembled here at run time.
fn with_fake_key(seed: &[u8]) -> Vec<u8> {
    let placeholder = b"@FAKE_AUTHKEY@";
    let fake = format!("tskey-{}-FUZZ-not-a-real-key", "auth");
    let mut out = Vec::with_capacity(seed.len());
    let mut i = 0;
    while i < seed.len() {
        if seed[i..].starts_with(placeholder) {
            out.extend_from_slice(fake.as_bytes());
            i += placeholder.len();
        } else {
            out.push(seed[i]);
            i += 1;
        }
    }
    out
}

fn seeds(dir: &Path) -> Vec<Vec<u8>> {
    let mut files: Vec<PathBuf> = std::fs::read_dir(dir)
        .map(|rd| rd.filter_map(|e| e.ok()).map(|e| e.path()).collect())
        .unwrap_or_default();
    files.sort();
    let mut out: Vec<Vec<u8>> = files
        .iter()
        .filter(|p| p.is_file())
        .filter_map(|p| std::fs::read(p).ok())
        .map(|seed| with_fake_key(&seed))
        .collect();
    if out.is_empty() {
        out.push(Vec::new());
    }
    out
}

fn mutate(rng: &mut fastrand::Rng, input: &mut Vec<u8>, seeds: &[Vec<u8>]) {
    let n = 1 + rng.usize(..8);
    for _ in 0..n {
        let len = input.len();
        match rng.u8(..10) {
            0 if len > 0 => {
                let i = rng.usize(..len);
                input[i] ^= 1 << rng.u8(..8);
            }
            1 if len > 0 => {
                let i = rng.usize(..len);
                input[i] = rng.u8(..);
            }
            2 => {
                let i = rng.usize(..=len);
                let k = 1 + rng.usize(..8);
                let bytes: Vec<u8> = (0..k).map(|_| rng.u8(..)).collect();
                input.splice(i..i, bytes);
            }
            3 if len > 0 => {
                let i = rng.usize(..len);
                let j = (i + 1 + rng.usize(..64)).min(len);
                input.drain(i..j);
            }
            4 if len > 0 => {
                // Duplicate a range (nesting, repetition).
                let i = rng.usize(..len);
                let j = (i + 1 + rng.usize(..256)).min(len);
                let chunk = input[i..j].to_vec();
                let at = rng.usize(..=input.len());
                input.splice(at..at, chunk);
            }
            5 | 6 => {
                let tok = DICT[rng.usize(..DICT.len())].as_bytes();
                let i = rng.usize(..=len);
                input.splice(i..i, tok.iter().copied());
            }
            7 => {
                // Splice in part of another seed.
                let other = &seeds[rng.usize(..seeds.len())];
                if !other.is_empty() {
                    let i = rng.usize(..other.len());
                    let j = (i + 1 + rng.usize(..512)).min(other.len());
                    let at = rng.usize(..=len);
                    input.splice(at..at, other[i..j].iter().copied());
                }
            }
            8 if len > 1 => {
                // Replace a range with a dictionary token.
                let i = rng.usize(..len);
                let j = (i + 1 + rng.usize(..16)).min(len);
                let tok = DICT[rng.usize(..DICT.len())].as_bytes();
                input.splice(i..j, tok.iter().copied());
            }
            _ if len > 0 => {
                // Interesting numbers in place of a digit run.
                let i = rng.usize(..len);
                let num = [
                    "0",
                    "-1",
                    "65535",
                    "65536",
                    "4294967296",
                    "99999999999999999999",
                ][rng.usize(..6)];
                input.splice(i..i, num.bytes());
            }
            _ => {}
        }
    }
    input.truncate(MAX_LEN);
}

fn save(target: &str, kind: &str, input: &[u8]) -> PathBuf {
    let dir = Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("artifacts")
        .join(target);
    let _ = std::fs::create_dir_all(&dir);
    let hash = fleetnix::secrets::sha256_hex(input);
    let path = dir.join(format!("{kind}-{}", &hash[..16]));
    let _ = std::fs::write(&path, input);
    path
}

thread_local! {
    static CURRENT: std::cell::RefCell<(&'static str, Vec<u8>)> = const { std::cell::RefCell::new(("", Vec::new())) };
}

fn run_one(name: &'static str, t: fleetnix_fuzz::Target, input: &[u8]) -> Duration {
    CURRENT.with(|c| {
        let mut c = c.borrow_mut();
        c.0 = name;
        c.1.clear();
        c.1.extend_from_slice(input);
    });
    let start = cpu_time();
    t(input);
    let took = cpu_time().saturating_sub(start);
    if took > SLOW {
        let p = save(name, "slow", input);
        eprintln!(
            "fuzz-loop: {name}: one input took {took:?} of CPU time (> {SLOW:?}); saved to {}",
            p.display()
        );
        std::process::exit(1);
    }
    took
}

/// CPU time of this thread: what an input costs, however busy the machine is.
fn cpu_time() -> Duration {
    let t = rustix::time::clock_gettime(rustix::time::ClockId::ThreadCPUTime);
    Duration::new(
        u64::try_from(t.tv_sec).unwrap_or(0),
        u32::try_from(t.tv_nsec).unwrap_or(0),
    )
}

fn main() {
    let opts = parse_args();
    let default_hook = std::panic::take_hook();
    std::panic::set_hook(Box::new(move |info| {
        CURRENT.with(|c| {
            if let Ok(c) = c.try_borrow() {
                let p = save(c.0, "crash", &c.1);
                eprintln!("fuzz-loop: {}: panic; input saved to {}", c.0, p.display());
            }
        });
        default_hook(info);
    }));
    if !opts.replay.is_empty() {
        for (name, t) in &opts.targets {
            for f in &opts.replay {
                let data = std::fs::read(f).unwrap_or_else(|e| {
                    eprintln!("fuzz-loop: {}: {e}", f.display());
                    std::process::exit(2)
                });
                let took = run_one(name, *t, &data);
                println!("{name}: {} ok in {took:?} CPU", f.display());
            }
        }
        return;
    }
    let per_target = opts
        .seconds
        .map(|s| Duration::from_secs_f64(s / opts.targets.len() as f64));
    for (name, t) in &opts.targets {
        let seeds = seeds(&opts.corpus.join(name));
        let mut rng = fastrand::Rng::with_seed(opts.seed);
        let start = Instant::now();
        let mut runs: u64 = 0;
        let mut slowest = Duration::ZERO;
        // Every seed as it is first.
        for s in &seeds {
            slowest = slowest.max(run_one(name, *t, s));
            runs += 1;
        }
        let mut input = Vec::new();
        loop {
            if opts.runs.is_some_and(|r| runs >= r)
                || per_target.is_some_and(|d| start.elapsed() >= d)
            {
                break;
            }
            // Mostly keep mutating the same input (deeper changes), sometimes restart from a seed.
            if input.is_empty() || rng.u8(..16) == 0 {
                input = seeds[rng.usize(..seeds.len())].clone();
            }
            mutate(&mut rng, &mut input, &seeds);
            slowest = slowest.max(run_one(name, *t, &input));
            runs += 1;
            if runs.is_multiple_of(100_000) {
                println!(
                    "fuzz-loop: {name}: {runs} inputs so far ({:.0} s), slowest {slowest:?} CPU",
                    start.elapsed().as_secs_f64()
                );
            }
        }
        let secs = start.elapsed().as_secs_f64();
        println!(
            "fuzz-loop: {name}: {runs} inputs in {secs:.1} s ({:.0}/s), slowest {slowest:?} CPU, {} seed(s), no panic",
            runs as f64 / secs.max(1e-9),
            seeds.len()
        );
    }
}
