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

CHECK_NAME="node-check"
# shellcheck source=lib/check.sh
source "$ROOT/scripts/lib/check.sh"

command -v node >/dev/null || fail "node not found"
[[ -d "$ROOT/tests/node/node_modules/@grpc/grpc-js" ]] ||
  fail "no @grpc/grpc-js in tests/node/node_modules: run scripts/install-tools.sh first"

start_server
log "server listening on 127.0.0.1:$PORT"

rc=0
timeout "$RUN_DEADLINE" node "$PROGRAM" "$ROOT/proto" "127.0.0.1:$PORT" || rc=$?
((rc != 124)) || fail "$PROGRAM did not finish within ${RUN_DEADLINE}s"
((rc == 0)) || fail "$PROGRAM exited $rc"

pass "${PROGRAM#"$ROOT/"}"

readme_example js env NODE_PATH="$ROOT/tests/node/node_modules" node

shutdown_server
echo "node-check: $PASSED passed, 0 failed"
