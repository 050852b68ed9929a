#!/usr/bin/env bash
# The CLI check: starts the real itc-server on a free loopback port, makes an agent's
# work with `buf curl` (task build-1 of worker-1 at 42%, task deploy-7 of worker-2 asking
# "Ship it?" with choices yes/no), then runs the README's `itc` block line by line, as a
# person would paste it, and checks each line's outcome and the state it leaves.
#
#   - every line must exit 0 and print something (`--json` output must parse as JSON);
#   - `itc watch` without --count follows until stopped: it is stopped with SIGINT after
#     FOLLOW_SECONDS and must exit 0 having printed the replayed events;
#   - `itc status --watch` needs a terminal: itc-cli/tests/cli.rs drives it in a
#     pseudo-terminal, so it is skipped here;
#   - REQUEST_ID is replaced by the id of deploy-7's input request.
#
# Needs: scripts/install-tools.sh run once (for buf), and the binaries built
# (cargo build -p itc-server -p itc-cli). They are $ITC_SERVER_BIN and $ITC_CLI_BIN,
# default target/debug/itc-server and target/debug/itc. Prints
# "cli-check: N passed, 0 failed" on success.
set -euo pipefail

ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
BUF="$ROOT/.tools/node_modules/.bin/buf"
SERVER_BIN="${ITC_SERVER_BIN:-$ROOT/target/debug/itc-server}"
CLI_BIN="${ITC_CLI_BIN:-$ROOT/target/debug/itc}"
START_DEADLINE=30 # seconds for the server to print its listening line
LINE_DEADLINE=60  # seconds for any one line of the README
FOLLOW_SECONDS=5  # how long a following `itc watch` runs before it is stopped
STOP_DEADLINE=15  # seconds for the server to exit after SIGTERM

WORK="$(mktemp -d "${TMPDIR:-/tmp}/itc-cli-check.XXXXXX")"

CHECK_NAME="cli-check"
# shellcheck source=lib/check.sh
source "$ROOT/scripts/lib/check.sh"

[[ -x "$BUF" ]] || fail "buf not found at $BUF: run scripts/install-tools.sh first"
[[ -x "$CLI_BIN" ]] || fail "itc not found at $CLI_BIN: run 'cargo build -p itc-cli' (or set ITC_CLI_BIN)"

start_server
export ITC_ADDR="127.0.0.1:$PORT"
export ITC_AS="cli-check"
export NO_COLOR=1
mkdir -p "$WORK/bin"
ln -s "$CLI_BIN" "$WORK/bin/itc"
export PATH="$WORK/bin:$PATH"
pass "server listening on $ITC_ADDR; itc is $CLI_BIN"

# --- an agent's work, from the shell -----------------------------------------------------
agent() { # agent METHOD JSON: one AgentService call; its answer on stdout
  timeout 30 "$BUF" curl --protocol grpc --http2-prior-knowledge --data "$2" \
    "http://$ITC_ADDR/itc.v1.AgentService/$1" || fail "AgentService/$1 $2 failed"
}
agent StartTask '{"taskId":"build-1","agentId":"worker-1","description":"build"}' >/dev/null
agent ReportProgress '{"taskId":"build-1","progress":0.42,"message":"compiling"}' >/dev/null
agent StartTask '{"taskId":"deploy-7","agentId":"worker-2","description":"deploy"}' >/dev/null
REQUEST_ID="$(agent RequestInput '{"taskId":"deploy-7","prompt":"Ship it?","choices":["yes","no"]}' |
  python3 -c 'import json, sys; print(json.load(sys.stdin)["input"]["requestId"])')"
pass "agents started build-1 (42%) and deploy-7, which asks for input ($REQUEST_ID)"

# --- the README's block, line by line --------------------------------------------------------
python3 - "$ROOT/README.md" >"$WORK/lines" <<'PY'
import re, sys
text = open(sys.argv[1]).read()
section = text.split("## From a terminal: the `itc` CLI", 1)[1].split("\n## ", 1)[0]
blocks = [b for b in re.findall(r"```sh\n(.*?)```", section, re.S) if re.search(r"^itc ", b, re.M)]
if len(blocks) != 1:
    sys.exit(f"the README's CLI section has {len(blocks)} sh blocks of itc lines, wanted 1")
for line in blocks[0].splitlines():
    if line.strip():
        print(line)
PY
lines=0
while IFS= read -r line; do
  command="${line//REQUEST_ID/$REQUEST_ID}"
  # The comment (after "  # ") is for people; the command is what runs.
  command="$(sed -E 's/[[:space:]]+#[[:space:]].*$//' <<<"$command")"
  [[ "$command" == itc\ * || "$command" == source\ * ]] || fail "README line is not an itc command: $line"
  lines=$((lines + 1))
  if [[ "$command" == *"--watch"* ]]; then
    echo "skip - $command (needs a terminal: itc-cli/tests/cli.rs drives it in a pseudo-terminal)"
    continue
  fi
  echo "\$ $command"
  rc=0
  if [[ "$command" == "itc watch "* && "$command" != *"--count"* ]]; then
    # Follows until stopped: stop it as a person would, with Ctrl-C (SIGINT).
    # (-k: killed if it ignored the Ctrl-C; that is exit 137, a failure.)
    timeout --preserve-status -s INT -k 10 "$FOLLOW_SECONDS" bash -c "$command" >"$WORK/out" 2>"$WORK/err" || rc=$?
  elif [[ "$command" == source\ * ]]; then
    (eval "$command" && complete -p itc) >"$WORK/out" 2>"$WORK/err" || rc=$?
  else
    timeout "$LINE_DEADLINE" bash -c "$command" >"$WORK/out" 2>"$WORK/err" || rc=$?
  fi
  sed 's/^/    /' "$WORK/out"
  ((rc == 0)) || fail "exit $rc from: $command
$(cat "$WORK/err")"
  [[ -s "$WORK/out" ]] || fail "no output from: $command"
  if [[ "$command" == *"--json"* ]]; then
    python3 -c '
import json, sys
text = open(sys.argv[1]).read()
try:
    json.loads(text)
except ValueError:
    [json.loads(l) for l in text.splitlines()]
' "$WORK/out" || fail "output of '$command' is not JSON (a document or JSON lines)"
  fi
  pass "$command"
done <"$WORK/lines"
((lines >= 10)) || fail "the README's itc block has $lines lines, expected at least 10"

# --- what the block did ---------------------------------------------------------------------
itc status --json >"$WORK/status.json" || fail "itc status --json failed"
got="$(python3 -c '
import json, sys
tasks = {t["task_id"]: t for t in json.load(open(sys.argv[1]))["tasks"]}
b, d = tasks["build-1"], tasks["deploy-7"]
print((b["status"], b["priority"], b["reason"], d["status"], len(d["open_inputs"])))
' "$WORK/status.json")"
[[ "$got" == "('CANCELLED', 9, 'not needed', 'RUNNING', 0)" ]] ||
  fail "after the README block, (build-1 status, priority, reason, deploy-7 status, open inputs) = $got"
pass "build-1 was interrupted, resumed, boosted to 9 and cancelled; deploy-7's question was answered"

# A steering verb on a task that does not exist: exit 3, as the README says.
rc=0
itc interrupt no-such-task 2>"$WORK/err" || rc=$?
((rc == 3)) || fail "itc interrupt no-such-task exited $rc, wanted 3: $(cat "$WORK/err")"
rc=0
itc --addr 127.0.0.1:1 status 2>"$WORK/err" || rc=$?
((rc == 6)) || fail "itc against nothing exited $rc, wanted 6: $(cat "$WORK/err")"
pass "exit codes: 3 for an unknown task, 6 for an unreachable server"

shutdown_server
echo "cli-check: $PASSED passed, 0 failed"
