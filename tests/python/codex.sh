#!/usr/bin/env bash
# Drives Codex (OpenAI's coding agent, `codex exec`) against a running full_proxy in demo mode
# through a custom provider with `wire_api = "responses"`, as README's Codex setup shows.
# Usage: codex.sh GATEWAY_URL CLIENT_TOKEN GATEWAY_LOG
# Skips with a printed reason when Node/npx or the Codex package cannot be had.
set -uo pipefail
url="$1"; token="$2"; log="$3"
pkg="${CODEX_NPM_PACKAGE:-@openai/codex@0.171.0}"

if ! command -v npx >/dev/null 2>&1; then
  echo "codex: skipped (no npx)"; exit 0
fi
home=$(mktemp -d); work=$(mktemp -d)
trap 'rm -rf "$home" "$work"' EXIT
if ! timeout 300 npx -y "$pkg" --version >"$home/install.log" 2>&1; then
  echo "codex: skipped (could not install $pkg: $(tail -n1 "$home/install.log"))"; exit 0
fi
cat >"$home/config.toml" <<TOML
model = "gemini-2.5-flash"
model_provider = "gateway"

[model_providers.gateway]
name = "tower-gemini gateway"
base_url = "$url/v1"
env_key = "GEMINI_GATEWAY_TOKEN"
wire_api = "responses"
request_max_retries = 0
stream_max_retries = 0
TOML
before=$(grep -c "route=/v1/responses status=200" "$log")
out="$home/out.txt"
( cd "$work" && CODEX_HOME="$home" GEMINI_GATEWAY_TOKEN="$token" \
    timeout 180 npx -y "$pkg" exec --skip-git-repo-check "Say hello in one sentence." \
    </dev/null >"$out" 2>"$home/err.txt" )
rc=$?
after=$(grep -c "route=/v1/responses status=200" "$log")
if [ $rc -ne 0 ]; then
  echo "FAIL: codex exec exited $rc"; tail -20 "$home/err.txt"; exit 1
fi
if ! grep -q '[[:alpha:]]' "$out"; then
  echo "FAIL: codex printed no answer"; tail -20 "$home/err.txt"; exit 1
fi
if [ "$after" -le "$before" ]; then
  echo "FAIL: no successful POST /v1/responses in the gateway log"; exit 1
fi
if grep -q "^ERROR:" "$home/err.txt" "$out"; then
  echo "FAIL: codex reported an error:"; grep "ERROR:" "$home/err.txt" | head -5; exit 1
fi
echo "codex: exec answered through /v1/responses ($((after - before)) request(s)): $(head -c 80 "$out" | tr '\n' ' ')…"
