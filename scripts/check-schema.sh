#!/usr/bin/env bash
# The schema check: `buf lint` (STANDARD rules, nothing disabled) and `buf breaking`
# (FILE rules, proto/buf.yaml) against the newest schema release, a git tag
# schema/vX.Y.Z. Until the first release exists, there is nothing to compare against
# and the comparison is skipped, saying so. Either way the breaking rules are shown to
# bite: a copy of proto/ with a field deleted must be refused against proto/ itself.
#
# Needs: scripts/install-tools.sh run once (for buf). Prints
# "schema-check: N passed, 0 failed".
set -euo pipefail

ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
BUF="$ROOT/.tools/node_modules/.bin/buf"
WORK="$(mktemp -d "${TMPDIR:-/tmp}/itc-schema-check.XXXXXX")"
trap 'rm -rf "$WORK"' EXIT
PASSED=0

pass() {
  PASSED=$((PASSED + 1))
  echo "ok $PASSED - $*"
}
fail() {
  echo "FAIL - $*" >&2
  echo "schema-check: $PASSED passed, 1 failed" >&2
  exit 1
}

[[ -x "$BUF" ]] || fail "buf not found at $BUF: run scripts/install-tools.sh first"

(cd "$ROOT/proto" && "$BUF" lint) || fail "buf lint found problems in proto/"
pass "buf lint: proto/ follows the STANDARD rules"

release=""
if git -C "$ROOT" rev-parse --git-dir >/dev/null 2>&1; then
  release="$(git -C "$ROOT" tag --list 'schema/v*' --sort=-v:refname | head -n 1)"
fi
if [[ -z "$release" ]]; then
  echo "skip - buf breaking: no schema release yet (no tag schema/v* in this clone)"
else
  (cd "$ROOT/proto" && "$BUF" breaking --against "$ROOT/.git#tag=$release,subdir=proto") ||
    fail "proto/ breaks compatibility with the release $release (above)"
  pass "buf breaking: proto/ is compatible with the release $release"
fi

# The rules bite: delete Task.status_message (field 6) in a copy; it must be refused.
cp -r "$ROOT/proto" "$WORK/proto"
python3 - "$WORK/proto/itc/v1/types.proto" <<'PY'
import re, sys
path = sys.argv[1]
text = open(path).read()
changed = re.sub(r"\n  string status_message = 6;\n", "\n  reserved 6;\n", text, count=1)
if changed == text:
    sys.exit("types.proto has no `string status_message = 6;` to delete for the self-test")
open(path, "w").write(changed)
PY
rc=0
(cd "$WORK/proto" && "$BUF" breaking --against "$ROOT/proto") >"$WORK/out" 2>&1 || rc=$?
((rc != 0)) && grep -q 'status_message' "$WORK/out" ||
  fail "buf breaking accepted a deleted field (exit $rc): $(cat "$WORK/out")"
pass "buf breaking refuses a deleted field: $(head -n 1 "$WORK/out")"

echo "schema-check: $PASSED passed, 0 failed"
