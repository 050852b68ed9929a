#!/usr/bin/env bash
# Runs every check of the project: the README's test command, and exactly what CI runs.
# Installs what it needs (npm @bufbuild/buf and a Python venv under .tools/, the Node
# check's packages under tests/node/node_modules).
set -euo pipefail
ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
cd "$ROOT"

step() { printf '\n==> %s\n' "$*"; }
# A CI run builds everything once: incremental artefacts would only cost time and disk.
if [[ "${CI:-}" == "true" ]]; then
  export CARGO_INCREMENTAL=0
fi
started=$SECONDS

step "install tools (buf, Python grpcio, Node grpc-js)"
bash scripts/install-tools.sh

step "cargo fmt --check"
cargo fmt --all -- --check
(cd fuzz && cargo fmt -- --check)

step "cargo clippy (all targets, warnings are errors)"
cargo clippy --workspace --all-targets --locked -- -D warnings
cargo clippy -p itc-server --features fuzzing --all-targets --locked -- -D warnings

step "cargo check of each crate on its own (no feature unification)"
for crate in itc-proto itc-server itc-client itc-bench itc-cli; do
  cargo check -p "$crate" --locked
done

step "cargo test (unit, end-to-end, doc)"
cargo test --workspace --locked

step "examples: each runs to completion against an in-process server"
cargo build --examples --locked --quiet
for example in simple_streaming streaming_coordination background_monitoring human_in_the_loop; do
  echo "--- example $example"
  timeout 60 "target/debug/examples/$example" >"target/example-$example.log" 2>&1 || {
    tail -n 30 "target/example-$example.log"
    echo "example $example failed" >&2
    exit 1
  }
  tail -n 3 "target/example-$example.log"
done
echo "examples: 4 passed, 0 failed"

step "benchmark tool: every scenario once at tiny sizes (a smoke run; it measures nothing)"
cargo build -p itc-bench --locked --quiet
timeout 300 target/debug/itc-bench --quick --repeat 1 --json >target/bench-smoke.jsonl 2>target/bench-smoke.log || {
  tail -n 30 target/bench-smoke.log
  echo "itc-bench --quick failed" >&2
  exit 1
}
rows=$(grep -c '"scenario"' target/bench-smoke.jsonl || true)
if [ "$rows" -lt 15 ]; then
  cat target/bench-smoke.jsonl
  echo "itc-bench --quick printed $rows result rows, expected at least 15" >&2
  exit 1
fi
echo "itc-bench --quick: $rows result rows, no scenario failed"

step "fuzzing: the seeds and regressions replayed, then each target for ${FUZZ_SECONDS:-20}s"
cargo test -p itc-server --features fuzzing --test fuzz_inputs --locked
bash scripts/fuzz.sh

step "schema: buf lint, and buf breaking against the newest release (tag schema/vX.Y.Z)"
bash scripts/check-schema.sh

step "shell check: buf curl by reflection against the real binary"
cargo build -p itc-server --locked --quiet
bash scripts/check-shell.sh

step "python check: stubs generated from proto/ (polling; steering with sessions, locks, input)"
bash scripts/check-python.sh

step "node check: @grpc/grpc-js with proto/ loaded at run time"
bash scripts/check-node.sh

step "cli check: the README's itc lines against the real binary"
cargo build -p itc-cli --locked --quiet
bash scripts/check-cli.sh

printf '\nall checks passed in %ss\n' "$((SECONDS - started))"
echo "checks: 13 passed, 0 failed"
