#!/usr/bin/env bash
# Creates .venv/ in the repository root and installs the project.
#   bash infra/setup.sh         what the main job needs (the project and its runtime dependencies)
#   bash infra/setup.sh --dev   and what the tests need: the dev extra, and Debian's chromium for the browser tests
# Idempotent: a stamp keyed on the dependency files and the mode skips pip when nothing changed
# (a --dev install also satisfies the plain one).
set -euo pipefail
cd "$(dirname "$0")/.."

mode="runtime"
case "${1:-}" in
  --dev) mode="dev" ;;
  "") ;;
  *) echo "usage: bash infra/setup.sh [--dev]" >&2; exit 2 ;;
esac

# The browser tests (pytest -m browser) drive the system Chromium through Playwright;
# `playwright install` is never used. Install Debian's chromium + chromium-driver if missing.
if [ "$mode" = "dev" ] && [ ! -x /usr/bin/chromium ]; then
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

key="$(cat pyproject.toml "$constraints" infra/requirements-deepspeed.txt | sha256sum | cut -c1-16)"
if [ -f ".venv/.installed-$key-dev" ] || [ -f ".venv/.installed-$key-$mode" ]; then
  echo "setup: .venv is up to date"
  exit 0
fi
target="."
[ "$mode" = "dev" ] && target=".[dev]"
echo "setup: installing the project ($mode) into .venv (constraints: $constraints)"
.venv/bin/python -m pip install --quiet --disable-pip-version-check -c "$constraints" -e "$target"
if [ "$mode" = "dev" ]; then
  # DeepSpeed builds against the torch just installed (build isolation would fetch another, CUDA, torch); its C++
  # ops are compiled when first used (DS_BUILD_OPS=0)
  .venv/bin/python -m pip install --quiet --disable-pip-version-check -c "$constraints" setuptools wheel
  DS_BUILD_OPS=0 .venv/bin/python -m pip install --quiet --disable-pip-version-check --no-build-isolation \
    -c "$constraints" -r infra/requirements-deepspeed.txt
fi
rm -f .venv/.installed-*
touch ".venv/.installed-$key-$mode"
