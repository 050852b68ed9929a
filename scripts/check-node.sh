#!/usr/bin/env bash
# The Node check: starts the real itc-server on a free loopback port and runs
# tests/node/check.js against it: @grpc/grpc-js with the protos of proto/ loaded at run
# time by @grpc/proto-loader. A coordinator subscribes with a filter and resumes with
# afterSeq; an agent starts a task and reports progress; GetStatus shows the outcome.
# Then the README's ```js example, exactly as written (but for the port).
#
# Needs: scripts/install-tools.sh run once (it installs tests/node/node_modules from
# tests/node/package-lock.json), and the server built (cargo build -p itc-server). The
# binary is $ITC_SERVER_BIN, default target/debug/itc-server. The program prints
# "node-check: N passed, 0 failed".
set -euo pipefail

ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
SERVER_BIN="${ITC_SERVER_BIN:-$ROOT/target/debug/itc-server}"
PROGRAM="$ROOT/tests/node/check.js"
START_DEADLINE=30 # seconds for the server to print its listening line
RUN_DEADLINE=120  # seconds for the Node program
STOP_DEADLINE=15  # seconds for the server to exit after SIGTERM

WORK="$(mktemp -d "${TMPDIR:-/tmp}/itc-node-check.XXXXXX")"

log() { echo "node check: $*"; }

fail() {
  echo "FAIL - $*" >&2
  server_log_tail
  echo "node check: failed" >&2
  exit 1
}

# shellcheck source=lib/server.sh
source "$ROOT/scripts/lib/server.sh"

command -v node >/dev/null || fail "node not found"
[[ -d "$ROOT/tests/node/node_modules/@grpc/grpc-js" ]] ||
  fail "no @grpc/grpc-js in tests/node/node_modules: run scripts/install-tools.sh first"

start_server
log "server listening on 127.0.0.1:$PORT"

rc=0
timeout "$RUN_DEADLINE" node "$PROGRAM" "$ROOT/proto" "127.0.0.1:$PORT" || rc=$?
((rc != 124)) || fail "$PROGRAM did not finish within ${RUN_DEADLINE}s"
((rc == 0)) || fail "$PROGRAM exited $rc"

log "running the README's js example"
python3 "$ROOT/scripts/lib/readme_example.py" extract js "127.0.0.1:$PORT" "$WORK/example.js" ||
  fail "could not take the js example from README.md"
rc=0
(cd "$ROOT" && NODE_PATH="$ROOT/tests/node/node_modules" timeout "$RUN_DEADLINE" node "$WORK/example.js") \
  >"$WORK/example.out" || rc=$?
cat "$WORK/example.out"
((rc == 0)) || fail "the README's js example exited $rc"
python3 "$ROOT/scripts/lib/readme_example.py" verify-progress "$WORK/example.out" ||
  fail "the README's js example printed something else"

shutdown_server
