#!/usr/bin/env bash
# Creates .venv/ in the repository root and installs the project with its dev extra.
# Idempotent: a stamp keyed on the dependency files skips pip when nothing changed.
set -euo pipefail
cd "$(dirname "$0")/.."

# The browser tests (pytest -m browser) drive the system Chromium through Playwright;
# `playwright install` is never used. Install Debian's chromium + chromium-driver if missing.
if [ ! -x /usr/bin/chromium ]; then
  if command -v apt-get >/dev/null 2>&1 && { [ "$(id -u)" -eq 0 ] || command -v sudo >/dev/null 2>&1; }; then
    as_root=""; [ "$(id -u)" -eq 0 ] || as_root="sudo"
    echo "setup: installing chromium and chromium-driver (Debian packages)"
    $as_root apt-get update && $as_root env DEBIAN_FRONTEND=noninteractive apt-get install -y chromium chromium-driver \
      || echo "setup: WARNING: could not install chromium; the browser tests (pytest -m browser) will fail" >&2
  else
    echo "setup: WARNING: /usr/bin/chromium is missing and cannot be installed here (needs apt-get and root or sudo);" \
      "install Debian's chromium and chromium-driver to run the browser tests (pytest -m browser)" >&2
  fi
fi

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
