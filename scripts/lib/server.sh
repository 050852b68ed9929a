# Shared by the shell and Python checks (source it): starts the real itc-server on a free
# loopback port with a temporary data dir, reads its port from its first stdout line
# (with a deadline, never a bare sleep), and stops it on exit.
#
# The caller sets WORK (a temp dir), SERVER_BIN, START_DEADLINE, STOP_DEADLINE, and
# defines `fail MESSAGE` and `log MESSAGE`. After `start_server`, PORT and SERVER_PID
# are set; `stop_server` sends SIGTERM (then SIGKILL after STOP_DEADLINE). Extra server
# flags go in the array SERVER_ARGS (optional).

SERVER_PID=""
SERVER_LOG="$WORK/server.log"

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

# Prints the tail of the server's log (for failure messages).
server_log_tail() {
  if [[ -s "$SERVER_LOG" ]]; then
    echo "--- last lines of the server's log ($SERVER_LOG) ---" >&2
    tail -n 20 "$SERVER_LOG" >&2 || true
  fi
}

start_server() {
  [[ -x "$SERVER_BIN" ]] || fail "server binary not found at $SERVER_BIN: run 'cargo build -p itc-server' (or set ITC_SERVER_BIN)"
  # Its stdout goes to a fifo we hold open read-write (so neither side blocks on open and
  # the server never gets SIGPIPE); its first line tells the port.
  local fifo="$WORK/stdout.fifo"
  rm -f "$fifo" # a server started before in the same check
  mkfifo "$fifo"
  exec 3<>"$fifo"
  local args=(--listen 127.0.0.1:0 --data-dir "$WORK/data" ${SERVER_ARGS[@]+"${SERVER_ARGS[@]}"})
  log "starting $SERVER_BIN ${args[*]}"
  "$SERVER_BIN" "${args[@]}" >&3 2>"$SERVER_LOG" &
  SERVER_PID=$!

  local first_line="" deadline=$((SECONDS + START_DEADLINE))
  while :; do
    if IFS= read -r -t 1 -u 3 first_line; then
      break
    fi
    kill -0 "$SERVER_PID" 2>/dev/null || fail "the server exited before printing its listening line"
    ((SECONDS < deadline)) || fail "the server printed no listening line within ${START_DEADLINE}s"
  done
  if [[ "$first_line" =~ ^listening\ on\ 127\.0\.0\.1:([0-9]+)$ ]]; then
    PORT="${BASH_REMATCH[1]}"
  else
    fail "unexpected first stdout line from the server: '$first_line' (wanted 'listening on 127.0.0.1:PORT')"
  fi
}

# Ends the check's server the way an operator would: SIGTERM, then it must exit 0 within
# STOP_DEADLINE (a graceful drain). Fails the check otherwise.
shutdown_server() {
  kill -TERM "$SERVER_PID"
  local deadline=$((SECONDS + STOP_DEADLINE)) rc=0
  while kill -0 "$SERVER_PID" 2>/dev/null; do
    ((SECONDS < deadline)) || fail "the server did not exit within ${STOP_DEADLINE}s of SIGTERM"
    sleep 0.1 # poll interval: a child's exit has no notification a shell can wait on with a deadline
  done
  wait "$SERVER_PID" || rc=$?
  SERVER_PID=""
  ((rc == 0)) || fail "the server exited $rc after SIGTERM, wanted 0"
}
