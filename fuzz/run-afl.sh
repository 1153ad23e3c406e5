#!/usr/bin/env bash
# Builds the AFL++ driver and fuzzes one target until EXECS executions (default 1,000,000),
# then prints AFL's summary. Usage: fuzz/run-afl.sh TARGET [EXECS]   (see docs/fuzzing.md)
set -euo pipefail
cd "$(dirname "$0")/.."
target="${1:?usage: fuzz/run-afl.sh TARGET [EXECS]}"
execs="${2:-1000000}"
export CARGO_TARGET_DIR=target/afl
cargo afl build --release -p fleetnix-fuzz --features afl --bin fuzz-afl
out="fuzz/out/$target"
mkdir -p "$out"
resume=(-i "fuzz/corpus/$target")
[ -d "$out/default/queue" ] && resume=(-i -)
AFL_SKIP_CPUFREQ=1 AFL_I_DONT_CARE_ABOUT_MISSING_CRASHES=1 AFL_NO_UI=1 AFL_NO_AFFINITY=1 \
  cargo afl fuzz "${resume[@]}" -o "$out" -t 1000 -m 4096 -E "$execs" \
  target/afl/release/fuzz-afl "$target" > "$out/afl.log" 2>&1 || true
stats="$out/default/fuzzer_stats"
grep -E '^(start_time|last_update|run_time|execs_done|execs_per_sec|corpus_count|bitmap_cvg|edges_found|total_edges|saved_crashes|saved_hangs)' "$stats"
