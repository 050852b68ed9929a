#!/usr/bin/env bash
# The shell (grpcurl-style) check: starts the real itc-server on a free loopback port and
# drives it with `buf curl` over gRPC using server reflection, exactly as the README shows:
#
#   buf curl --protocol grpc --http2-prior-knowledge --data '{}' \
#     http://127.0.0.1:50051/itc.v1.MonitorService/GetStatus
#
# Needs: scripts/install-tools.sh run once, and the server built
# (cargo build -p itc-server). The binary is $ITC_SERVER_BIN, default
# target/debug/itc-server. Prints "shell-check: N passed, 0 failed" on success.
set -euo pipefail

ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
BUF="$ROOT/.tools/node_modules/.bin/buf"
SERVER_BIN="${ITC_SERVER_BIN:-$ROOT/target/debug/itc-server}"
START_DEADLINE=30 # seconds for the server to print its listening line
CALL_DEADLINE=30  # seconds for any one buf curl call
STOP_DEADLINE=15  # seconds for the server to exit after SIGTERM
POLL_DEADLINE=10  # seconds for GetStatus to show the reported progress

PASSED=0
WORK="$(mktemp -d "${TMPDIR:-/tmp}/itc-shell-check.XXXXXX")"

log() { echo "shell check: $*"; }

pass() {
  PASSED=$((PASSED + 1))
  echo "ok $PASSED - $*"
}

fail() {
  echo "FAIL - $*" >&2
  server_log_tail
  echo "shell-check: $PASSED passed, 1 failed" >&2
  exit 1
}

# shellcheck source=lib/server.sh
source "$ROOT/scripts/lib/server.sh"

# --- preconditions ---------------------------------------------------------------------
[[ -x "$BUF" ]] || fail "buf not found at $BUF: run scripts/install-tools.sh first"
command -v python3 >/dev/null || fail "python3 not found"

# --- start the server --------------------------------------------------------------------
start_server
URL="http://127.0.0.1:$PORT"
pass "server listening on 127.0.0.1:$PORT"

# --- helpers -------------------------------------------------------------------------------
# show ARGS...: prints a command line the way a README shows it (buf for the local path).
show() {
  local out="" a
  for a in "$@"; do
    if [[ "$a" =~ ^[A-Za-z0-9_./:=@%+,-]+$ ]]; then
      out+=" $a"
    else
      out+=" '${a//\'/\'\\\'\'}'"
    fi
  done
  echo "\$${out}"
}

# call ARGS...: runs `buf curl --protocol grpc --http2-prior-knowledge ARGS...` with a
# deadline; stdout in $OUT, stderr in $ERR, exit code in $RC. Never fails the script.
call() {
  local args=(curl --protocol grpc --http2-prior-knowledge "$@")
  show buf "${args[@]}"
  RC=0
  timeout "$CALL_DEADLINE" "$BUF" "${args[@]}" >"$WORK/out" 2>"$WORK/err" || RC=$?
  OUT="$(cat "$WORK/out")"
  ERR="$(cat "$WORK/err")"
  if ((RC == 124)); then
    fail "buf curl did not finish within ${CALL_DEADLINE}s"
  fi
}

# call_ok ARGS...: like call, but the call must succeed.
call_ok() {
  call "$@"
  ((RC == 0)) || fail "buf curl failed (exit $RC): $ERR"
}

# json EXPR: evaluates the Python expression EXPR with `d` bound to the JSON in $OUT
# (or in $JSON_INPUT when set) and prints the result (str() of it).
json() {
  local input="${JSON_INPUT-$OUT}"
  python3 -c '
import json, sys
d = json.loads(sys.stdin.read())
print(eval(sys.argv[1], {"d": d}))
' "$1" <<<"$input"
}

# --- (a) reflection: list the methods ---------------------------------------------------
call_ok --list-methods "$URL"
for m in itc.v1.MonitorService/GetStatus grpc.health.v1.Health/Check \
  itc.v1.AgentService/StartTask itc.v1.AgentService/ReportProgress; do
  grep -qxF "$m" <<<"$OUT" || fail "--list-methods does not list $m; it listed:
$OUT"
done
pass "reflection lists MonitorService/GetStatus, Health/Check and the AgentService methods"

# --- (b) health --------------------------------------------------------------------------
call_ok --data '{}' "$URL/grpc.health.v1.Health/Check"
status="$(json 'd.get("status")')" || fail "Health/Check answered no JSON: $OUT"
[[ "$status" == "SERVING" ]] || fail "Health/Check status is '$status', wanted SERVING: $OUT"
pass "grpc.health.v1.Health/Check is SERVING"

# --- (c) start a task, report progress, poll GetStatus -----------------------------------
call_ok --data '{"agentId":"shell-agent","description":"from the shell"}' \
  "$URL/itc.v1.AgentService/StartTask"
TASK_ID="$(json 'd["task"]["taskId"]')" || fail "StartTask answered no task id: $OUT"
[[ -n "$TASK_ID" ]] || fail "StartTask answered an empty task id: $OUT"
got="$(json '(d["task"]["agentId"], d["task"]["status"], d["task"]["version"])')"
[[ "$got" == "('shell-agent', 'TASK_STATUS_RUNNING', '1')" ]] ||
  fail "StartTask answered (agentId, status, version) = $got, wanted ('shell-agent', 'TASK_STATUS_RUNNING', '1'): $OUT"
pass "StartTask started task $TASK_ID (RUNNING, version 1)"

call_ok --data "{\"taskId\":\"$TASK_ID\",\"progress\":0.5,\"message\":\"halfway there\"}" \
  "$URL/itc.v1.AgentService/ReportProgress"
got="$(json '(d.get("version"), d.get("status"))')" || fail "ReportProgress answered no JSON: $OUT"
[[ "$got" == "('2', 'TASK_STATUS_RUNNING')" ]] ||
  fail "ReportProgress answered (version, status) = $got, wanted ('2', 'TASK_STATUS_RUNNING'): $OUT"
pass "ReportProgress 0.5 accepted (version 2, RUNNING)"

# Poll GetStatus until the task shows the progress, within a deadline.
deadline=$((SECONDS + POLL_DEADLINE))
TASK_EXPR='[t for t in d.get("tasks", []) if t.get("taskId") == "'"$TASK_ID"'"]'
while :; do
  call_ok --data '{}' "$URL/itc.v1.MonitorService/GetStatus"
  got="$(json "[(t.get('status'), t.get('progress'), t.get('statusMessage')) for t in $TASK_EXPR]")" ||
    fail "GetStatus answered no JSON: $OUT"
  [[ "$got" == "[('TASK_STATUS_RUNNING', 0.5, 'halfway there')]" ]] && break
  ((SECONDS < deadline)) ||
    fail "GetStatus did not show task $TASK_ID RUNNING at progress 0.5 within ${POLL_DEADLINE}s; (status, progress, statusMessage) = $got; last answer: $OUT"
  sleep 0.2 # poll interval
done
pass "GetStatus shows task $TASK_ID RUNNING at progress 0.5 with its status message"
got="$(json '(d.get("state"), int(d["statistics"]["tasksStarted"]) >= 1, int(d.get("activeTasks", 0)) >= 1)')"
[[ "$got" == "('SERVICE_STATE_RUNNING', True, True)" ]] ||
  fail "GetStatus (state, tasksStarted >= 1, activeTasks >= 1) = $got: $OUT"
pass "GetStatus reports SERVICE_STATE_RUNNING with the task counted"

# --- (d) a bad call fails with invalid_argument -------------------------------------------
call --data "{\"taskId\":\"$TASK_ID\",\"progress\":2}" "$URL/itc.v1.AgentService/ReportProgress"
((RC != 0)) || fail "ReportProgress with progress 2 succeeded: $OUT"
code="$(JSON_INPUT="$ERR" json 'd.get("code")' 2>/dev/null)" || code=""
[[ "$code" == "invalid_argument" ]] ||
  fail "ReportProgress with progress 2 failed with '$code', wanted invalid_argument (exit $RC): $ERR"
pass "ReportProgress with progress 2 fails with invalid_argument"

# --- shutdown: SIGTERM, exit 0 within a deadline -------------------------------------------
log "stopping the server (SIGTERM)"
shutdown_server
pass "the server exits 0 on SIGTERM"

echo "shell-check: $PASSED passed, 0 failed"
