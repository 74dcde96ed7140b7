#!/usr/bin/env bash
# Drives a running full_proxy (demo mode) with the official Python SDKs: google-genai, openai
# (chat completions and the Responses API) and anthropic; then Claude Code (claude_code.sh) and
# Codex (codex.sh) themselves when npm can install them.
# Installs them into a venv; when that is impossible the suite is skipped with a printed reason.
set -uo pipefail
here="$(cd "$(dirname "$0")" && pwd)"
root="$(cd "$here/../.." && pwd)"
venv="${SDK_VENV:-${CARGO_TARGET_DIR:-$root/target}/sdk-venv}"

if ! command -v python3 >/dev/null 2>&1; then
  echo "sdk tests: skipped (no python3)"; exit 0
fi
if [ ! -x "$venv/bin/pytest" ] || ! "$venv/bin/python" -c "import anthropic" >/dev/null 2>&1; then
  [ -x "$venv/bin/pip" ] || python3 -m venv "$venv" >/dev/null 2>&1
  "$venv/bin/pip" install -q openai google-genai anthropic pytest >/tmp/sdk-pip.log 2>&1
  if [ ! -x "$venv/bin/pytest" ] || ! "$venv/bin/python" -c "import anthropic" >/dev/null 2>&1; then
    echo "sdk tests: skipped (could not install openai/google-genai/anthropic/pytest; see /tmp/sdk-pip.log)"; exit 0
  fi
fi

token="sdk-test-token-$RANDOM$RANDOM"
admin="sdk-admin-token-$RANDOM$RANDOM"
log=$(mktemp)
# Build first, then run the binary itself, so the signal below reaches full_proxy, not cargo.
( cd "$root" && cargo build -q --example full_proxy ) || { echo "could not build full_proxy"; exit 1; }
bin="${CARGO_TARGET_DIR:-$root/target}/debug/examples/full_proxy"
# The Claude names Claude Code and the anthropic tests ask for are served by Gemini models.
( cd "$root" && exec env -u GEMINI_API_KEYS LISTEN_ADDR="127.0.0.1:0" ALLOWED_TOKENS="$token" ADMIN_TOKEN="$admin" \
    MODEL_ALIASES="claude-sonnet-4-5=gemini-2.5-flash,claude-haiku-4-5=gemini-2.5-flash" \
    SHUTDOWN_GRACE_SECONDS=5 "$bin" >"$log" 2>&1 ) &
pid=$!
cleanup() { kill -9 "$pid" 2>/dev/null; wait "$pid" 2>/dev/null; }
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
# Claude Code itself, non-interactive, when npm can install it (skipped with a reason otherwise).
"$here/claude_code.sh" "$url" "$token" || rc=1
# Codex (npm) through the Responses API; skipped with a reason when it cannot be installed.
"$here/codex.sh" "$url" "$token" "$log" || rc=1
if [ $rc -ne 0 ]; then echo "--- full_proxy log ---"; tail -50 "$log"; fi
# SIGTERM: full_proxy stops taking connections, finishes what is in flight and exits 0.
kill -TERM "$pid"
stopped=""
for _ in $(seq 1 100); do
  kill -0 "$pid" 2>/dev/null || { stopped=1; break; }
  sleep 0.1
done
if [ -z "$stopped" ]; then echo "FAIL: full_proxy still running 10 s after SIGTERM"; rc=1
else
  wait "$pid"; code=$?
  if [ "$code" -ne 0 ]; then echo "FAIL: full_proxy exited $code after SIGTERM"; rc=1; fi
  grep -q "shutting down" "$log" || { echo "FAIL: no shutdown line in the log after SIGTERM"; rc=1; }
  if curl -fs "$url/health" >/dev/null 2>&1; then echo "FAIL: still answering after SIGTERM"; rc=1; fi
  [ $rc -eq 0 ] && echo "sdk tests: SIGTERM stopped full_proxy cleanly (exit 0)"
fi
# The log must never hold the client token in clear.
if grep -q "$token" "$log"; then echo "FAIL: the client token appears in full_proxy's log"; rc=1; fi
exit $rc
