# Shared by the checks against the real binary (source it; it sources server.sh): counted
# passes, a failure that shows the server's log, and the README examples.
#
# The caller sets CHECK_NAME (e.g. "shell-check"), ROOT, WORK, SERVER_BIN and the
# deadlines server.sh wants (START_DEADLINE, STOP_DEADLINE; RUN_DEADLINE for
# readme_example). It gets: PASSED, log, pass, fail, readme_example, and server.sh's
# start_server / shutdown_server.

PASSED=0

log() { echo "${CHECK_NAME%-check} check: $*"; }

pass() {
  PASSED=$((PASSED + 1))
  echo "ok $PASSED - $*"
}

fail() {
  echo "FAIL - $*" >&2
  server_log_tail
  echo "$CHECK_NAME: $PASSED passed, 1 failed" >&2
  exit 1
}

# readme_example LANG COMMAND...: runs the README's one ```LANG example, with the server's
# port put in for 50051, as `COMMAND... FILE` from the repository root, and checks what it
# prints (three progress events in order, then TASK_STATUS_COMPLETED).
readme_example() {
  local lang="$1" rc=0
  shift
  log "running the README's $lang example"
  python3 "$ROOT/scripts/lib/readme_example.py" extract "$lang" "127.0.0.1:$PORT" "$WORK/example.$lang" ||
    fail "could not take the $lang example from README.md"
  (cd "$ROOT" && timeout "$RUN_DEADLINE" "$@" "$WORK/example.$lang") >"$WORK/example.out" || rc=$?
  cat "$WORK/example.out"
  ((rc == 0)) || fail "the README's $lang example exited $rc"
  python3 "$ROOT/scripts/lib/readme_example.py" verify-progress "$WORK/example.out" ||
    fail "the README's $lang example printed something else"
  pass "the README's $lang example runs as written"
}

# shellcheck source=server.sh
source "$ROOT/scripts/lib/server.sh"
