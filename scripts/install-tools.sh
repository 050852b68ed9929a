#!/usr/bin/env bash
# Installs the tools the shell and Python checks need, locally under .tools/ (gitignored):
#   - buf (npm package @bufbuild/buf) in .tools/node_modules/.bin/buf
#   - a Python venv in .tools/venv with grpcio, grpcio-tools, protobuf and cryptography
#   - cargo-fuzz in .tools/cargo/bin (for scripts/fuzz.sh)
#   - the Node check's packages (@grpc/grpc-js, @grpc/proto-loader) in
#     tests/node/node_modules, exactly as tests/node/package-lock.json pins them
# Idempotent: a tool already present at the pinned version is left alone.
# Needs only node/npm and python3 (CPython 3.11) on the machine; no input (CI-safe).
set -euo pipefail

ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
TOOLS="$ROOT/.tools"

BUF_VERSION="1.75.0"
GRPCIO_VERSION="1.85.1"
GRPCIO_TOOLS_VERSION="1.85.1"
CRYPTOGRAPHY_VERSION="50.0.2" # the TLS check makes its certificates with it
PROTOBUF_VERSION="7.36.2" # grpcio-tools 1.85.1 wants protobuf >=7.35.1,<8; pinned for repeatable stubs

log() { echo "install-tools: $*"; }

mkdir -p "$TOOLS"

# --- buf ---------------------------------------------------------------------------
buf_bin="$TOOLS/node_modules/.bin/buf"
have_buf=""
if [[ -x "$buf_bin" ]]; then
  have_buf="$("$buf_bin" --version 2>/dev/null || true)"
fi
if [[ "$have_buf" == "$BUF_VERSION" ]]; then
  log "buf $BUF_VERSION already installed"
else
  command -v npm >/dev/null || { echo "install-tools: npm not found" >&2; exit 1; }
  log "installing buf $BUF_VERSION (npm @bufbuild/buf) into .tools"
  npm install --no-audit --no-fund --save-exact --prefix "$TOOLS" "@bufbuild/buf@$BUF_VERSION" >/dev/null
  have_buf="$("$buf_bin" --version)"
  [[ "$have_buf" == "$BUF_VERSION" ]] || {
    echo "install-tools: buf reports version '$have_buf', wanted $BUF_VERSION" >&2
    exit 1
  }
  log "buf $have_buf installed"
fi

# --- Python venv with grpcio / grpcio-tools -------------------------------------------
venv="$TOOLS/venv"
py="$venv/bin/python"
installed_versions() {
  "$py" - <<'PY' 2>/dev/null || true
import importlib.metadata as m
try:
    print(m.version("grpcio"), m.version("grpcio-tools"), m.version("protobuf"), m.version("cryptography"))
except m.PackageNotFoundError:
    pass
PY
}
want="$GRPCIO_VERSION $GRPCIO_TOOLS_VERSION $PROTOBUF_VERSION $CRYPTOGRAPHY_VERSION"
have=""
if [[ -e "$venv" ]]; then
  if [[ -x "$py" ]] && "$py" -c '' 2>/dev/null; then
    have="$(installed_versions)"
  else
    log "the venv in .tools/venv is broken (its python does not run): recreating it"
    rm -rf "$venv"
  fi
fi
if [[ "$have" == "$want" ]]; then
  log "venv already has grpcio $GRPCIO_VERSION, grpcio-tools $GRPCIO_TOOLS_VERSION, protobuf $PROTOBUF_VERSION, cryptography $CRYPTOGRAPHY_VERSION"
else
  command -v python3 >/dev/null || { echo "install-tools: python3 not found" >&2; exit 1; }
  if [[ ! -x "$py" ]]; then
    log "creating Python venv in .tools/venv"
    python3 -m venv "$venv"
  fi
  log "installing grpcio==$GRPCIO_VERSION grpcio-tools==$GRPCIO_TOOLS_VERSION protobuf==$PROTOBUF_VERSION cryptography==$CRYPTOGRAPHY_VERSION into .tools/venv"
  "$py" -m pip install --quiet --disable-pip-version-check --no-input \
    "grpcio==$GRPCIO_VERSION" "grpcio-tools==$GRPCIO_TOOLS_VERSION" "protobuf==$PROTOBUF_VERSION" \
    "cryptography==$CRYPTOGRAPHY_VERSION"
  have="$(installed_versions)"
  [[ "$have" == "$want" ]] || {
    echo "install-tools: venv reports '$have', wanted '$want'" >&2
    exit 1
  }
  log "venv ready: grpcio $GRPCIO_VERSION, grpcio-tools $GRPCIO_TOOLS_VERSION, protobuf $PROTOBUF_VERSION, cryptography $CRYPTOGRAPHY_VERSION"
fi

# --- Node packages for the Node check ------------------------------------------------------
# `npm ci` installs exactly the lockfile (integrity-checked); install scripts are not run
# (none is needed: protobufjs's only one prints a version notice). Skipped when the
# installed tree already matches the lockfile.
node_dir="$ROOT/tests/node"
installed_lock="$node_dir/node_modules/.package-lock.json"
if [[ -f "$installed_lock" ]] && node -e '
const fs = require("fs");
const want = JSON.parse(fs.readFileSync(process.argv[1])).packages;
const have = JSON.parse(fs.readFileSync(process.argv[2])).packages;
for (const [k, v] of Object.entries(want)) {
  if (k && (!have[k] || have[k].version !== v.version)) process.exit(1);
}' "$node_dir/package-lock.json" "$installed_lock" 2>/dev/null; then
  log "tests/node/node_modules already matches tests/node/package-lock.json"
else
  command -v npm >/dev/null || { echo "install-tools: npm not found" >&2; exit 1; }
  log "installing the Node check's packages (npm ci in tests/node)"
  npm ci --ignore-scripts --no-audit --no-fund --prefix "$node_dir" >/dev/null
  log "tests/node/node_modules ready: $(cd "$node_dir" && node -p 'require("@grpc/grpc-js/package.json").version + " grpc-js, " + require("@grpc/proto-loader/package.json").version + " proto-loader"')"
fi

# --- cargo-fuzz, for scripts/fuzz.sh ---------------------------------------------------------
CARGO_FUZZ_VERSION="0.13.2"
cargo_fuzz="$TOOLS/cargo/bin/cargo-fuzz"
if [[ -x "$cargo_fuzz" ]] && [[ "$("$cargo_fuzz" --version 2>/dev/null)" == "cargo-fuzz $CARGO_FUZZ_VERSION" ]]; then
  log "cargo-fuzz $CARGO_FUZZ_VERSION already installed"
else
  log "installing cargo-fuzz $CARGO_FUZZ_VERSION into .tools/cargo (a few minutes, once)"
  cargo install --quiet --locked --root "$TOOLS/cargo" --version "$CARGO_FUZZ_VERSION" cargo-fuzz
  log "cargo-fuzz $("$cargo_fuzz" --version) installed"
fi

log "done"
