#!/usr/bin/env bash
# The Python check: generates Python stubs from proto/ with grpc_tools (from the venv
# that scripts/install-tools.sh makes in .tools/venv), starts the real itc-server on a
# free loopback port, and runs tests/python/itc_polling_check.py against it: a Python
# agent drives a task while a Python poller reads it back with GetStatus and GetTask.
#
# Needs: scripts/install-tools.sh run once, and the server built
# (cargo build -p itc-server). The binary is $ITC_SERVER_BIN, default
# target/debug/itc-server. The program prints "python-check: N passed, 0 failed".
set -euo pipefail

ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
PY="$ROOT/.tools/venv/bin/python"
SERVER_BIN="${ITC_SERVER_BIN:-$ROOT/target/debug/itc-server}"
PROGRAM="$ROOT/tests/python/itc_polling_check.py"
START_DEADLINE=30 # seconds for the server to print its listening line
RUN_DEADLINE=120  # seconds for the Python program
STOP_DEADLINE=15  # seconds for the server to exit after SIGTERM

SERVER_PID=""
WORK="$(mktemp -d "${TMPDIR:-/tmp}/itc-python-check.XXXXXX")"
SERVER_LOG="$WORK/server.log"
GEN="$WORK/gen"

log() { echo "python check: $*"; }

fail() {
  echo "FAIL - $*" >&2
  if [[ -s "$SERVER_LOG" ]]; then
    echo "--- last lines of the server's log ($SERVER_LOG) ---" >&2
    tail -n 20 "$SERVER_LOG" >&2 || true
  fi
  echo "python check: failed" >&2
  exit 1
}

stop_server() {
  # Stops the server we started (by pid), first politely, then for sure.
  [[ -n "$SERVER_PID" ]] || return 0
  if kill -0 "$SERVER_PID" 2>/dev/null; then
    kill -TERM "$SERVER_PID" 2>/dev/null || true
    local deadline=$((SECONDS + STOP_DEADLINE))
    while kill -0 "$SERVER_PID" 2>/dev/null && ((SECONDS < deadline)); do
      sleep 0.1
    done
    kill -KILL "$SERVER_PID" 2>/dev/null || true
  fi
  wait "$SERVER_PID" 2>/dev/null || true
  SERVER_PID=""
}

cleanup() {
  local rc=$?
  stop_server
  exec 3>&- || true
  rm -rf "$WORK"
  exit "$rc"
}
trap cleanup EXIT
trap 'exit 130' INT
trap 'exit 143' TERM

# --- preconditions ---------------------------------------------------------------------
[[ -x "$PY" ]] || fail "no Python venv at $ROOT/.tools/venv: run scripts/install-tools.sh first"
[[ -x "$SERVER_BIN" ]] || fail "server binary not found at $SERVER_BIN: run 'cargo build -p itc-server' (or set ITC_SERVER_BIN)"

# --- generate the stubs ------------------------------------------------------------------
# protoc names modules after their paths under -Iproto: itc/v1/agent_service_pb2.py, which
# imports `from itc.v1 import types_pb2`, so the output root goes on PYTHONPATH (itc and
# itc/v1 are namespace packages). grpc_tools adds its bundled google/protobuf/*.proto.
mkdir -p "$GEN"
log "generating Python stubs from proto/itc/v1/*.proto"
(cd "$ROOT" && "$PY" -m grpc_tools.protoc -Iproto --python_out="$GEN" --grpc_python_out="$GEN" proto/itc/v1/*.proto) ||
  fail "grpc_tools.protoc failed on proto/itc/v1/*.proto"
[[ -f "$GEN/itc/v1/agent_service_pb2_grpc.py" && -f "$GEN/itc/v1/monitor_service_pb2_grpc.py" ]] ||
  fail "grpc_tools.protoc produced no itc/v1/*_pb2_grpc.py under $GEN"

# --- start the server --------------------------------------------------------------------
# Its stdout goes to a fifo we hold open read-write (so neither side blocks on open and
# the server never gets SIGPIPE); its first line tells the port.
FIFO="$WORK/stdout.fifo"
mkfifo "$FIFO"
exec 3<>"$FIFO"
log "starting $SERVER_BIN --listen 127.0.0.1:0 --data-dir $WORK/data"
"$SERVER_BIN" --listen 127.0.0.1:0 --data-dir "$WORK/data" >&3 2>"$SERVER_LOG" &
SERVER_PID=$!

FIRST_LINE=""
deadline=$((SECONDS + START_DEADLINE))
while :; do
  if IFS= read -r -t 1 -u 3 FIRST_LINE; then
    break
  fi
  kill -0 "$SERVER_PID" 2>/dev/null || fail "the server exited before printing its listening line"
  ((SECONDS < deadline)) || fail "the server printed no listening line within ${START_DEADLINE}s"
done
if [[ "$FIRST_LINE" =~ ^listening\ on\ 127\.0\.0\.1:([0-9]+)$ ]]; then
  PORT="${BASH_REMATCH[1]}"
else
  fail "unexpected first stdout line from the server: '$FIRST_LINE' (wanted 'listening on 127.0.0.1:PORT')"
fi
log "server listening on 127.0.0.1:$PORT"

# --- run the Python program ------------------------------------------------------------------
rc=0
PYTHONPATH="$GEN${PYTHONPATH:+:$PYTHONPATH}" PYTHONDONTWRITEBYTECODE=1 \
  timeout "$RUN_DEADLINE" "$PY" "$PROGRAM" "127.0.0.1:$PORT" || rc=$?
((rc != 124)) || fail "$PROGRAM did not finish within ${RUN_DEADLINE}s"
((rc == 0)) || fail "$PROGRAM exited $rc"

# --- shutdown: SIGTERM, exit 0 within a deadline -------------------------------------------
# Silent on success, so that the program's "python-check: N passed, 0 failed" stays the
# last line.
kill -TERM "$SERVER_PID"
deadline=$((SECONDS + STOP_DEADLINE))
while kill -0 "$SERVER_PID" 2>/dev/null; do
  ((SECONDS < deadline)) || fail "the server did not exit within ${STOP_DEADLINE}s of SIGTERM"
  sleep 0.1
done
rc=0
wait "$SERVER_PID" || rc=$?
SERVER_PID=""
((rc == 0)) || fail "the server exited $rc after SIGTERM, wanted 0"
