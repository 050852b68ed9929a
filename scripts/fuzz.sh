#!/usr/bin/env bash
# The fuzzing check: builds the cargo-fuzz targets of fuzz/ (libFuzzer with
# AddressSanitizer) and runs each for FUZZ_SECONDS (default 20) from its committed seeds
# (fuzz/seeds/<target>) and what earlier runs here kept (fuzz/corpus/<target>, ignored by
# git). A crash fails the check and names the input cargo-fuzz saved under
# fuzz/artifacts/<target>/: fix the bug, and add the input to
# fuzz/regressions/<target>/, which itc-server's fuzz_inputs test replays on every run.
#
# The machine's stable toolchain builds the targets with RUSTC_BOOTSTRAP=1 (the
# sanitizer flags are unstable). cargo-fuzz is installed in .tools/cargo by
# scripts/install-tools.sh. Prints "fuzz: N targets, no crash".
set -euo pipefail

ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
CARGO_FUZZ="$ROOT/.tools/cargo/bin/cargo-fuzz"
SECONDS_EACH="${FUZZ_SECONDS:-20}"
TARGETS=(store_segment requests)

[[ -x "$CARGO_FUZZ" ]] || { echo "fuzz: no cargo-fuzz at $CARGO_FUZZ: run scripts/install-tools.sh" >&2; exit 1; }
cd "$ROOT/fuzz"
export RUSTC_BOOTSTRAP=1

echo "fuzz: building ${TARGETS[*]} (release, AddressSanitizer)"
"$CARGO_FUZZ" build -O

for target in "${TARGETS[@]}"; do
  mkdir -p "corpus/$target"
  echo "fuzz: $target for ${SECONDS_EACH}s"
  rc=0
  # -timeout: one input taking 10 s is a hang; -rss_limit_mb: a blow-up is a crash.
  "$CARGO_FUZZ" run -O "$target" "corpus/$target" "seeds/$target" -- \
    -max_total_time="$SECONDS_EACH" -timeout=10 -rss_limit_mb=2048 -print_final_stats=1 \
    >"$ROOT/target/fuzz-$target.log" 2>&1 || rc=$?
  grep -E '^stat::number_of_executed_units|^stat::new_units_added|^#[0-9]+.*DONE' "$ROOT/target/fuzz-$target.log" || true
  if ((rc != 0)); then
    tail -n 40 "$ROOT/target/fuzz-$target.log"
    echo "fuzz: $target crashed or hung (exit $rc); the input is under fuzz/artifacts/$target/" >&2
    exit 1
  fi
done
echo "fuzz: ${#TARGETS[@]} targets, no crash"
