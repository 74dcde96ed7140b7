#!/usr/bin/env bash
# Drives a running full_proxy (demo mode) with the official Python SDKs: google-genai and openai.
# Installs them into a venv; when that is impossible the suite is skipped with a printed reason.
set -uo pipefail
here="$(cd "$(dirname "$0")" && pwd)"
root="$(cd "$here/../.." && pwd)"
venv="${SDK_VENV:-${CARGO_TARGET_DIR:-$root/target}/sdk-venv}"

if ! command -v python3 >/dev/null 2>&1; then
  echo "sdk tests: skipped (no python3)"; exit 0
fi
if [ ! -x "$venv/bin/pytest" ]; then
  python3 -m venv "$venv" >/dev/null 2>&1 && "$venv/bin/pip" install -q openai google-genai pytest >/tmp/sdk-pip.log 2>&1
  if [ ! -x "$venv/bin/pytest" ]; then
    echo "sdk tests: skipped (could not install openai/google-genai/pytest; see /tmp/sdk-pip.log)"; exit 0
  fi
fi

token="sdk-test-token-$RANDOM$RANDOM"
admin="sdk-admin-token-$RANDOM$RANDOM"
log=$(mktemp)
( cd "$root" && env -u GEMINI_API_KEYS LISTEN_ADDR="127.0.0.1:0" ALLOWED_TOKENS="$token" ADMIN_TOKEN="$admin" \
    cargo run -q --example full_proxy >"$log" 2>&1 ) &
pid=$!
cleanup() { kill "$pid" 2>/dev/null; pkill -f "target/.*/examples/full_proxy" -P "$pid" 2>/dev/null; wait "$pid" 2>/dev/null; }
trap cleanup EXIT
# The gateway picks a free port itself and prints it: no race with other programs for a port.
url=""
for _ in $(seq 1 1500); do
  url=$(grep -o 'listening on http://[0-9.:]*' "$log" | head -n1 | sed 's/listening on //')
  [ -n "$url" ] && curl -fs "$url/health" >/dev/null 2>&1 && break
  kill -0 "$pid" 2>/dev/null || { echo "full_proxy exited early:"; cat "$log"; exit 1; }
  sleep 0.2
done
[ -n "$url" ] || { echo "full_proxy did not start:"; cat "$log"; exit 1; }
GATEWAY_URL="$url" GATEWAY_TOKEN="$token" GATEWAY_ADMIN_TOKEN="$admin" \
  "$venv/bin/pytest" -q -p no:cacheprovider "$here"
rc=$?
if [ $rc -ne 0 ]; then echo "--- full_proxy log ---"; tail -50 "$log"; fi
# The log must never hold the client token in clear.
if grep -q "$token" "$log"; then echo "FAIL: the client token appears in full_proxy's log"; rc=1; fi
exit $rc
