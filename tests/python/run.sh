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

port=$(python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1",0)); print(s.getsockname()[1])')
token="sdk-test-token-$RANDOM$RANDOM"
admin="sdk-admin-token-$RANDOM$RANDOM"
log=$(mktemp)
( cd "$root" && env -u GEMINI_API_KEYS LISTEN_ADDR="127.0.0.1:$port" ALLOWED_TOKENS="$token" ADMIN_TOKEN="$admin" \
    cargo run -q --example full_proxy >"$log" 2>&1 ) &
pid=$!
cleanup() { kill "$pid" 2>/dev/null; pkill -f "target/.*/examples/full_proxy" -P "$pid" 2>/dev/null; wait "$pid" 2>/dev/null; }
trap cleanup EXIT
for _ in $(seq 1 600); do
  curl -fs "http://127.0.0.1:$port/health" >/dev/null 2>&1 && break
  kill -0 "$pid" 2>/dev/null || { echo "full_proxy exited early:"; cat "$log"; exit 1; }
  sleep 0.2
done
GATEWAY_URL="http://127.0.0.1:$port" GATEWAY_TOKEN="$token" GATEWAY_ADMIN_TOKEN="$admin" \
  "$venv/bin/pytest" -q -p no:cacheprovider "$here"
rc=$?
if [ $rc -ne 0 ]; then echo "--- full_proxy log ---"; tail -50 "$log"; fi
# The log must never hold the client token in clear.
if grep -q "$token" "$log"; then echo "FAIL: the client token appears in full_proxy's log"; rc=1; fi
exit $rc
