#!/usr/bin/env bash
# The Python check: generates Python stubs from proto/ with grpc_tools (from the venv
# that scripts/install-tools.sh makes in .tools/venv), starts the real itc-server on a
# free loopback port, and runs every tests/python/itc_*_check.py against it:
#   - itc_polling_check.py: an agent drives a task while a poller reads it back with
#     GetStatus and GetTask;
#   - itc_steering_check.py: an agent on the Heartbeat stream and a coordinator that
#     subscribes, resumes with after_seq, steers under a lock and answers input;
# then the README's ```python example, exactly as written (but for the port); then, on a
# second server with TLS, required client certificates and a tokens file,
# tests/python/itc_tls.py (certificates made at test time by scripts/lib/make_certs.py).
#
# Needs: scripts/install-tools.sh run once, and the server built
# (cargo build -p itc-server). The binary is $ITC_SERVER_BIN, default
# target/debug/itc-server. Each program prints "python-check: N passed, 0 failed"; the
# script ends with "python-check: N programs passed".
set -euo pipefail

ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
PY="$ROOT/.tools/venv/bin/python"
SERVER_BIN="${ITC_SERVER_BIN:-$ROOT/target/debug/itc-server}"
PROGRAMS=("$ROOT"/tests/python/itc_*_check.py)
START_DEADLINE=30 # seconds for the server to print its listening line
RUN_DEADLINE=120  # seconds for each Python program
STOP_DEADLINE=15  # seconds for the server to exit after SIGTERM

WORK="$(mktemp -d "${TMPDIR:-/tmp}/itc-python-check.XXXXXX")"
GEN="$WORK/gen"

CHECK_NAME="python-check"
# shellcheck source=lib/check.sh
source "$ROOT/scripts/lib/check.sh"

# --- preconditions ---------------------------------------------------------------------
[[ -x "$PY" ]] || fail "no Python venv at $ROOT/.tools/venv: run scripts/install-tools.sh first"

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
start_server
log "server listening on 127.0.0.1:$PORT"

# --- run the Python programs, one after the other, against the same server -------------------
((${#PROGRAMS[@]} >= 2)) || fail "found ${#PROGRAMS[@]} programs tests/python/itc_*_check.py, wanted at least 2"
for program in "${PROGRAMS[@]}"; do
  log "running ${program#"$ROOT/"}"
  rc=0
  PYTHONPATH="$GEN${PYTHONPATH:+:$PYTHONPATH}" PYTHONDONTWRITEBYTECODE=1 \
    timeout "$RUN_DEADLINE" "$PY" "$program" "127.0.0.1:$PORT" || rc=$?
  ((rc != 124)) || fail "$program did not finish within ${RUN_DEADLINE}s"
  ((rc == 0)) || fail "$program exited $rc"
  pass "${program#"$ROOT/"}"
done

# --- the README's example ----------------------------------------------------------------------
readme_example python env PYTHONPATH="$GEN" PYTHONDONTWRITEBYTECODE=1 "$PY"

# --- shutdown: SIGTERM, exit 0 within a deadline -------------------------------------------
shutdown_server

# --- TLS, mTLS and a bearer token -----------------------------------------------------------
log "making a throw-away PKI and a tokens file in $WORK"
"$PY" "$ROOT/scripts/lib/make_certs.py" "$WORK/pki" || fail "scripts/lib/make_certs.py failed"
TOKEN="py-tls-token-$(od -An -N16 -tx1 /dev/urandom | tr -d ' \n')"
TOKEN_SHA256="$(printf %s "$TOKEN" | sha256sum | cut -d' ' -f1)"
printf '[[principal]]\nid = "py-tls-agent"\nroles = ["agent"]\ntoken_sha256 = "%s"\n' "$TOKEN_SHA256" >"$WORK/tokens.toml"
SERVER_ARGS=(--tls-cert-file "$WORK/pki/server.pem" --tls-key-file "$WORK/pki/server.key"
  --tls-client-ca-file "$WORK/pki/client-ca.pem" --auth-tokens-file "$WORK/tokens.toml")
start_server
log "TLS server listening on 127.0.0.1:$PORT"
rc=0
# (GRPC_VERBOSITY: the refused handshakes are expected; grpc-core would log each.)
PYTHONPATH="$GEN:$ROOT/tests/python" PYTHONDONTWRITEBYTECODE=1 GRPC_VERBOSITY=NONE \
  timeout "$RUN_DEADLINE" "$PY" "$ROOT/tests/python/itc_tls.py" "127.0.0.1:$PORT" "$WORK/pki" "$TOKEN" || rc=$?
((rc == 0)) || fail "tests/python/itc_tls.py exited $rc"
pass "tests/python/itc_tls.py: TLS, mTLS and a token from Python stubs"
shutdown_server
echo "python-check: $PASSED passed, 0 failed (${#PROGRAMS[@]} programs, the README example, TLS)"
