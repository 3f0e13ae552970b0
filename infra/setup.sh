#!/usr/bin/env bash
# Creates .venv/ in the repository root and installs the project with its dev extra.
# Idempotent: a stamp keyed on the dependency files skips pip when nothing changed.
set -euo pipefail
cd "$(dirname "$0")/.."

python_bin="${PYTHON:-python3}"
constraints="${RLHF_CONSTRAINTS:-infra/constraints-cpu.txt}"

if [ ! -x .venv/bin/python ]; then
  "$python_bin" -m venv .venv
fi

stamp=".venv/.installed-$(cat pyproject.toml "$constraints" | sha256sum | cut -c1-16)"
if [ ! -f "$stamp" ]; then
  echo "setup: installing the project into .venv (constraints: $constraints)"
  .venv/bin/python -m pip install --quiet --disable-pip-version-check -c "$constraints" -e ".[dev]"
  rm -f .venv/.installed-*
  touch "$stamp"
else
  echo "setup: .venv is up to date"
fi
