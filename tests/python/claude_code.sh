#!/usr/bin/env bash
# Drives Claude Code in its non-interactive mode (`claude -p`) against a running full_proxy in
# demo mode: usage `claude_code.sh <gateway url> <client token>`. The gateway must map the
# Claude names used here with MODEL_ALIASES (run.sh does). Claude Code comes from npm
# (@anthropic-ai/claude-code, installed into the target directory) or a `claude` already on
# PATH; without either the test is skipped with a printed reason.
set -uo pipefail
url="$1"
token="$2"
here="$(cd "$(dirname "$0")" && pwd)"
root="$(cd "$here/../.." && pwd)"
prefix="${CLAUDE_CODE_PREFIX:-${CARGO_TARGET_DIR:-$root/target}/claude-code}"

claude="$prefix/node_modules/.bin/claude"
if [ ! -x "$claude" ]; then
  if command -v npm >/dev/null 2>&1; then
    mkdir -p "$prefix"
    npm install --no-audit --no-fund --prefix "$prefix" @anthropic-ai/claude-code >/tmp/claude-code-npm.log 2>&1
  fi
fi
if [ ! -x "$claude" ] || ! "$claude" --version >/dev/null 2>&1; then
  if command -v claude >/dev/null 2>&1; then
    claude="$(command -v claude)"
  else
    echo "claude code: skipped (npm could not install @anthropic-ai/claude-code; see /tmp/claude-code-npm.log)"
    exit 0
  fi
fi

# A throwaway home: no login, settings or history of the machine's user is read or written.
home=$(mktemp -d)
trap 'rm -rf "$home"' EXIT
out=$(mktemp)
err=$(mktemp)
# Every model Claude Code may ask for is a Claude name the gateway maps (MODEL_ALIASES);
# no telemetry, update check or other traffic beside the API calls.
HOME="$home" XDG_CONFIG_HOME="$home/.config" \
  ANTHROPIC_BASE_URL="$url" ANTHROPIC_API_KEY="$token" \
  ANTHROPIC_MODEL=claude-sonnet-4-5 ANTHROPIC_SMALL_FAST_MODEL=claude-haiku-4-5 \
  ANTHROPIC_DEFAULT_SONNET_MODEL=claude-sonnet-4-5 ANTHROPIC_DEFAULT_HAIKU_MODEL=claude-haiku-4-5 \
  ANTHROPIC_DEFAULT_OPUS_MODEL=claude-sonnet-4-5 \
  CLAUDE_CODE_DISABLE_NONESSENTIAL_TRAFFIC=1 DISABLE_AUTOUPDATER=1 DISABLE_TELEMETRY=1 \
  timeout 120 "$claude" -p "Tell me about lighthouses" --output-format json </dev/null >"$out" 2>"$err"
rc=$?
if [ $rc -ne 0 ]; then
  echo "FAIL: claude -p exited $rc"; echo "--- stdout ---"; cat "$out"; echo "--- stderr ---"; tail -30 "$err"
  exit 1
fi
# The JSON result: not an error, and the text is the demo upstream's answer (its sentences end
# with a full stop).
python3 - "$out" <<'EOF' || exit 1
import json, sys
raw = open(sys.argv[1]).read()
r = json.loads(raw)
if r.get("is_error") or r.get("subtype") != "success":
    print("FAIL: claude -p reported an error:", raw[:2000]); sys.exit(1)
text = r.get("result", "")
if len(text) < 50 or not text.rstrip().endswith("."):
    print("FAIL: unexpected answer:", raw[:2000]); sys.exit(1)
print("claude code: ok (" + str(len(text)) + " characters answered through the gateway)")
EOF
