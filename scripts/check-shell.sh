#!/usr/bin/env bash
# The shell (grpcurl-style) check: starts the real itc-server on a free loopback port and
# drives it with `buf curl` over gRPC using server reflection, with exactly the calls the
# README shows, e.g.
#
#   buf curl --protocol grpc --http2-prior-knowledge --data '{}' \
#     http://127.0.0.1:50051/itc.v1.MonitorService/GetStatus
#
# and checks what each answers. Every call is recorded (its port and the ids the server
# made put back as the README writes them); at the end, every `buf curl` call of README.md
# must be among them, so the README cannot show a call that CI does not run.
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
STREAM_SECONDS=2  # max_stream_duration of the check's server: Subscribe calls end by themselves
SERVER_ARGS=(--max-stream-duration "$STREAM_SECONDS")

WORK="$(mktemp -d "${TMPDIR:-/tmp}/itc-shell-check.XXXXXX")"

CHECK_NAME="shell-check"
# shellcheck source=lib/check.sh
source "$ROOT/scripts/lib/check.sh"

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

# record ARGS...: appends the call, as the README would write it, to $WORK/calls (one JSON
# array per line): the server's port back to 50051, and the input request's id (once
# known, in $REQUEST_ID) back to the README's placeholder.
record() {
  python3 -c '
import json, sys
port, request_id, *argv = sys.argv[1:]
def readme(a):
    a = a.replace("http://127.0.0.1:" + port, "http://127.0.0.1:50051")
    return a.replace(request_id, "<requestId from RequestInput>") if request_id else a
print(json.dumps(["buf"] + [readme(a) for a in argv]))
' "$PORT" "${REQUEST_ID:-}" "$@" >>"$WORK/calls"
}

# call ARGS...: runs `buf curl --protocol grpc --http2-prior-knowledge ARGS...` with a
# deadline; stdout in $OUT, stderr in $ERR, exit code in $RC. Never fails the script.
call() {
  local args=(curl --protocol grpc --http2-prior-knowledge "$@")
  show buf "${args[@]}"
  record "${args[@]}"
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

# stream EXPR: like json, for a streaming call: `ms` is the list of the messages `buf
# curl` printed (one JSON object each, one after the other) and `es` their events.
stream() {
  python3 -c '
import json, sys
text, ms, at = sys.stdin.read(), [], 0
decoder = json.JSONDecoder()
while text[at:].strip():
    at += len(text[at:]) - len(text[at:].lstrip())
    m, at = decoder.raw_decode(text, at)
    ms.append(m)
es = [m.get("event", {}) for m in ms]
print(eval(sys.argv[1], {"ms": ms, "es": es}))
' "$1" <<<"$OUT"
}

# --- (a) reflection: list the services, then the methods ----------------------------------
call_ok --list-services "$URL"
for service in itc.v1.AgentService itc.v1.CoordinatorService itc.v1.MonitorService itc.v1.SessionService \
  grpc.health.v1.Health; do
  grep -qxF "$service" <<<"$OUT" || fail "--list-services does not list $service; it listed:
$OUT"
done
pass "reflection lists the four ITC services and health"
call_ok --list-methods "$URL"
for m in itc.v1.MonitorService/GetStatus itc.v1.MonitorService/Subscribe grpc.health.v1.Health/Check \
  itc.v1.AgentService/StartTask itc.v1.SessionService/Connect itc.v1.CoordinatorService/Coordinate; do
  grep -qxF "$m" <<<"$OUT" || fail "--list-methods does not list $m; it listed:
$OUT"
done
pass "reflection lists the methods of the ITC services and of health"

# --- (b) health --------------------------------------------------------------------------
call_ok "$URL/grpc.health.v1.Health/Check"
status="$(json 'd.get("status")')" || fail "Health/Check answered no JSON: $OUT"
[[ "$status" == "SERVING" ]] || fail "Health/Check status is '$status', wanted SERVING: $OUT"
pass "grpc.health.v1.Health/Check is SERVING"

# --- (c) start a task, report progress, poll GetStatus -----------------------------------
TASK_ID="shell-task"
call_ok --data '{"taskId":"shell-task","agentId":"shell-agent","description":"from the shell"}' \
  "$URL/itc.v1.AgentService/StartTask"
got="$(json '(d["task"]["taskId"], d["task"]["agentId"], d["task"]["status"], d["task"]["version"])')" ||
  fail "StartTask answered no task: $OUT"
[[ "$got" == "('shell-task', 'shell-agent', 'TASK_STATUS_RUNNING', '1')" ]] ||
  fail "StartTask answered (taskId, agentId, status, version) = $got, wanted ('shell-task', 'shell-agent', 'TASK_STATUS_RUNNING', '1'): $OUT"
pass "StartTask started task shell-task (RUNNING, version 1)"

call_ok --data '{"taskId":"shell-task","progress":0.5,"message":"halfway"}' \
  "$URL/itc.v1.AgentService/ReportProgress"
got="$(json '(d.get("version"), d.get("status"))')" || fail "ReportProgress answered no JSON: $OUT"
[[ "$got" == "('2', 'TASK_STATUS_RUNNING')" ]] ||
  fail "ReportProgress answered (version, status) = $got, wanted ('2', 'TASK_STATUS_RUNNING'): $OUT"
PROGRESS_SEQ="$(json 'd["seq"]')"
pass "ReportProgress 0.5 accepted (version 2, RUNNING, seq $PROGRESS_SEQ)"

# Poll GetStatus until the task shows the progress, within a deadline.
deadline=$((SECONDS + POLL_DEADLINE))
TASK_EXPR='[t for t in d.get("tasks", []) if t.get("taskId") == "'"$TASK_ID"'"]'
while :; do
  call_ok --data '{}' "$URL/itc.v1.MonitorService/GetStatus"
  got="$(json "[(t.get('status'), t.get('progress'), t.get('statusMessage')) for t in $TASK_EXPR]")" ||
    fail "GetStatus answered no JSON: $OUT"
  [[ "$got" == "[('TASK_STATUS_RUNNING', 0.5, 'halfway')]" ]] && break
  ((SECONDS < deadline)) ||
    fail "GetStatus did not show task $TASK_ID RUNNING at progress 0.5 within ${POLL_DEADLINE}s; (status, progress, statusMessage) = $got; last answer: $OUT"
  sleep 0.2 # poll interval: this step is the polling path itself
done
pass "GetStatus shows task $TASK_ID RUNNING at progress 0.5 with its status message"
got="$(json '(d.get("state"), int(d["statistics"]["tasksStarted"]) >= 1, int(d.get("activeTasks", 0)) >= 1)')"
[[ "$got" == "('SERVICE_STATE_RUNNING', True, True)" ]] ||
  fail "GetStatus (state, tasksStarted >= 1, activeTasks >= 1) = $got: $OUT"
pass "GetStatus reports SERVICE_STATE_RUNNING with the task counted"

# A second agent's task, which the filtered calls below must leave out.
call_ok --data '{"taskId":"other-task","agentId":"other-agent","description":"noise"}' \
  "$URL/itc.v1.AgentService/StartTask"
call_ok --data '{"statuses":["TASK_STATUS_RUNNING"],"agentIds":["shell-agent"],"pageSize":10}' \
  "$URL/itc.v1.MonitorService/GetStatus"
got="$(json '([t["taskId"] for t in d.get("tasks", [])], d.get("totalSize"))')"
[[ "$got" == "(['shell-task'], '1')" ]] ||
  fail "GetStatus filtered by status and agent listed (tasks, totalSize) = $got, wanted (['shell-task'], '1'): $OUT"
pass "GetStatus filtered by RUNNING and shell-agent lists shell-task only"

# --- (d) Subscribe: the stream as JSON, ending by itself at max_stream_duration -----------
call_ok --data '{"filter":{"agentIds":["shell-agent"]},"snapshot":true}' \
  "$URL/itc.v1.MonitorService/Subscribe"
got="$(stream '(es[0].get("type"), es[1].get("type"), es[1].get("task", {}).get("taskId"), es[1].get("task", {}).get("progress"), es[-1].get("type"), es[-1].get("stream", {}).get("reason"))')" ||
  fail "Subscribe printed something that is not a sequence of JSON objects: $OUT"
[[ "$got" == "('EVENT_TYPE_STREAM_START', 'EVENT_TYPE_TASK_SNAPSHOT', 'shell-task', 0.5, 'EVENT_TYPE_STREAM_END', 'STREAM_END_REASON_MAX_DURATION')" ]] ||
  fail "Subscribe with snapshot: (first type, second type, its task, its progress, last type, end reason) = $got: $OUT"
got="$(stream 'sorted({e.get("taskId") for e in es if e.get("taskId")})')"
[[ "$got" == "['shell-task']" ]] || fail "Subscribe filtered by shell-agent showed tasks $got: $OUT"
pass "Subscribe with snapshot streams STREAM_START, shell-task's snapshot, and STREAM_END after ${STREAM_SECONDS}s"

call_ok --data '{"filter":{"taskIds":["shell-task"],"eventTypes":["EVENT_TYPE_TASK_PROGRESS"]},"afterSeq":"0"}' \
  "$URL/itc.v1.MonitorService/Subscribe"
got="$(stream '[(e.get("seq"), e.get("type"), e.get("progress")) for e in es if e.get("seq")]')"
[[ "$got" == "[('$PROGRESS_SEQ', 'EVENT_TYPE_TASK_PROGRESS', {'progress': 0.5, 'message': 'halfway'})]" ]] ||
  fail "Subscribe after seq 0 replayed $got, wanted the one progress event (seq $PROGRESS_SEQ): $OUT"
pass "Subscribe with afterSeq 0 replays the one TASK_PROGRESS event (seq $PROGRESS_SEQ), then ends"

# --- (e) steering: a human interrupts and resumes; the agent asks, the human answers -------
call_ok --data '{"sessionId":"alice","kind":"SESSION_KIND_HUMAN","capabilities":{"interruption":true,"taskCoordination":true}}' \
  "$URL/itc.v1.SessionService/Connect"
got="$(json '(d["session"]["sessionId"], d["session"]["kind"])')"
[[ "$got" == "('alice', 'SESSION_KIND_HUMAN')" ]] || fail "Connect answered (sessionId, kind) = $got: $OUT"
pass "Connect opens alice's HUMAN session"

call_ok --data '{"taskId":"shell-task","coordinatorId":"alice","action":"COMMAND_ACTION_INTERRUPT","data":{"reason":"check the output"}}' \
  "$URL/itc.v1.CoordinatorService/Coordinate"
got="$(json '(d["command"]["action"], d["command"]["state"], d["command"]["coordinatorId"])')"
[[ "$got" == "('COMMAND_ACTION_INTERRUPT', 'COMMAND_STATE_ADMITTED', 'alice')" ]] ||
  fail "Coordinate INTERRUPT answered (action, state, coordinatorId) = $got: $OUT"
call_ok --data '{"taskId":"shell-task"}' "$URL/itc.v1.MonitorService/GetTask"
got="$(json 'd["task"]["status"]')"
[[ "$got" == "TASK_STATUS_INTERRUPTED" ]] || fail "after the interrupt, the task is $got: $OUT"
pass "Coordinate INTERRUPT is admitted and the task is INTERRUPTED"

call_ok --data '{"taskId":"shell-task","coordinatorId":"alice","action":"COMMAND_ACTION_RESUME"}' \
  "$URL/itc.v1.CoordinatorService/Coordinate"
call_ok --data '{"taskId":"shell-task"}' "$URL/itc.v1.MonitorService/GetTask"
got="$(json 'd["task"]["status"]')"
[[ "$got" == "TASK_STATUS_RUNNING" ]] || fail "after the resume, the task is $got: $OUT"
pass "Coordinate RESUME makes the task RUNNING again"

call_ok --data '{"taskId":"shell-task","prompt":"Ship it?","choices":["yes","no"]}' \
  "$URL/itc.v1.AgentService/RequestInput"
REQUEST_ID="$(json 'd["input"]["requestId"]')"
got="$(json '(d["input"]["state"], d["input"]["choices"])')"
[[ -n "$REQUEST_ID" && "$got" == "('INPUT_STATE_OPEN', ['yes', 'no'])" ]] ||
  fail "RequestInput answered (state, choices) = $got: $OUT"
call_ok --data "{\"requestId\":\"$REQUEST_ID\",\"coordinatorId\":\"alice\",\"answer\":\"yes\"}" \
  "$URL/itc.v1.CoordinatorService/AnswerInput"
got="$(json '(d["input"]["state"], d["input"]["answer"], d["input"]["answeredBy"])')"
[[ "$got" == "('INPUT_STATE_ANSWERED', 'yes', 'alice')" ]] ||
  fail "AnswerInput answered (state, answer, answeredBy) = $got: $OUT"
pass "RequestInput opens request $REQUEST_ID; AnswerInput 'yes' by alice answers it"

# --- (f) a bad call fails with invalid_argument -------------------------------------------
call --data "{\"taskId\":\"$TASK_ID\",\"progress\":2}" "$URL/itc.v1.AgentService/ReportProgress"
((RC != 0)) || fail "ReportProgress with progress 2 succeeded: $OUT"
code="$(JSON_INPUT="$ERR" json 'd.get("code")' 2>/dev/null)" || code=""
[[ "$code" == "invalid_argument" ]] ||
  fail "ReportProgress with progress 2 failed with '$code', wanted invalid_argument (exit $RC): $ERR"
pass "ReportProgress with progress 2 fails with invalid_argument"

# --- (g) the README shows no call this check did not run ------------------------------------
missing="$(python3 - "$ROOT/README.md" "$WORK/calls" <<'PY'
import json, re, shlex, sys
readme, calls = sys.argv[1:]
ran = {tuple(json.loads(line)) for line in open(calls)}
text = open(readme).read()
shown = []
for block in re.findall(r"```sh\n(.*?)```", text, re.S):
    for command in block.replace("\\\n", " ").splitlines():
        words = shlex.split(command, comments=True)
        if words[:2] == ["buf", "curl"]:
            shown.append(tuple(words))
if not shown:
    print("(README.md shows no buf curl call at all)")
for words in shown:
    if words not in ran:
        print(shlex.join(words))
PY
)"
[[ -z "$missing" ]] || fail "README.md shows buf curl calls this check did not run:
$missing"
shown="$(grep -c '^buf curl' "$ROOT/README.md" || true)"
pass "every buf curl call of README.md ($shown) ran here, as written"

# --- shutdown: SIGTERM, exit 0 within a deadline -------------------------------------------
log "stopping the server (SIGTERM)"
shutdown_server
pass "the server exits 0 on SIGTERM"

echo "shell-check: $PASSED passed, 0 failed"
