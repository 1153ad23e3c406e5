//! AFL++ driver: `cargo afl fuzz -i fuzz/corpus/TARGET -o OUT target/afl/release/fuzz-afl TARGET`
//! (see docs/fuzzing.md). Persistent mode: one process runs many inputs.

fn main() {
    let name = std::env::args().nth(1).unwrap_or_default();
    let Some(target) = fleetnix_fuzz::target(&name) else {
        let names: Vec<&str> = fleetnix_fuzz::TARGETS.iter().map(|(n, _)| *n).collect();
        eprintln!("usage: fuzz-afl TARGET  (targets: {})", names.join(", "));
        std::process::exit(2);
    };
    afl::fuzz!(|data: &[u8]| {
        target(data);
    });
}
