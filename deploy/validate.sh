#!/usr/bin/env bash
# Validates deploy/ offline (no cluster, no Docker): every Kubernetes manifest against the
# Kubernetes JSON schemas (strict), kustomization.yaml, cross-references schemas cannot see,
# and the compose files against the Compose specification. What is checked: deploy/validate.py.
#
#   bash deploy/validate.sh
#
# Installs its tools itself (kubernetes-validate, which bundles the Kubernetes schemas, and
# check-jsonschema, which bundles the Compose schema) into a venv kept under
# ${CARGO_TARGET_DIR:-/tmp}/k8s-venv and reused while the pinned versions below stay the same.
# Exits non-zero on an invalid manifest. Exits 0 without validating only when the Python package
# registry cannot be reached to install the tools (it says so).
set -euo pipefail
cd "$(dirname "$0")/.."

REQUIREMENTS="kubernetes-validate==1.37.0 check-jsonschema==0.39.0"
VENV="${K8S_VENV:-${CARGO_TARGET_DIR:-/tmp}/k8s-venv}"
PY="${PYTHON:-python3}"

if ! [ -x "$VENV/bin/python" ] || [ "$(cat "$VENV/.requirements" 2>/dev/null)" != "$REQUIREMENTS" ]; then
  echo "validate: installing $REQUIREMENTS into $VENV"
  rm -rf "$VENV"
  if ! "$PY" -m venv "$VENV" >/tmp/k8s-venv-install.log 2>&1; then
    cat /tmp/k8s-venv-install.log
    echo "validate: cannot create a Python venv with $PY (on Debian: apt-get install python3-venv)" >&2
    exit 1
  fi
  # shellcheck disable=SC2086
  if ! "$VENV/bin/python" -m pip install --quiet --disable-pip-version-check --retries 2 --timeout 20 \
    $REQUIREMENTS >>/tmp/k8s-venv-install.log 2>&1; then
    # Tell "the registry is out of reach" (skip) from any other failure (fail): ask the
    # configured index about pip itself, which it always has.
    if ! "$VENV/bin/python" -m pip index versions pip --retries 1 --timeout 20 >/dev/null 2>&1; then
      rm -rf "$VENV"
      echo "validate: SKIPPED: the Python package registry is unreachable, so the schema" \
        "validators cannot be installed (see /tmp/k8s-venv-install.log)"
      exit 0
    fi
    tail -n 20 /tmp/k8s-venv-install.log
    rm -rf "$VENV"
    echo "validate: installing $REQUIREMENTS failed although the registry answers" >&2
    exit 1
  fi
  echo "$REQUIREMENTS" >"$VENV/.requirements"
fi

exec "$VENV/bin/python" deploy/validate.py
