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

lock="infra/lock"
key="$(cat pyproject.toml "$constraints" infra/requirements-deepspeed.txt "$lock"/*.txt | sha256sum | cut -c1-16)"
if [ -f ".venv/.installed-$key-dev" ] || [ -f ".venv/.installed-$key-$mode" ]; then
  echo "setup: .venv is up to date"
  exit 0
fi
target="."
[ "$mode" = "dev" ] && target=".[dev]"
pip=(.venv/bin/python -m pip install --quiet --disable-pip-version-check)

# The lock (infra/lock/, written by infra/lock.py): every package at one version, its file's hash checked. It is for
# Linux x86_64 and CPython 3.11 with the CPU torch; a machine of another class, or one that brings its own
# constraints (a CUDA torch: RLHF_CONSTRAINTS), resolves from pyproject.toml instead.
locked_machine() {
  [ -z "${RLHF_CONSTRAINTS:-}" ] && .venv/bin/python -c 'import platform, sys
sys.exit(not (sys.platform == "linux" and platform.machine() == "x86_64" and sys.version_info[:2] == (3, 11)))'
}

install_locked() {
  "${pip[@]}" --require-hashes --no-deps -r "$lock/$mode.txt" || return 1
  "${pip[@]}" --no-deps --no-build-isolation -e "$target" || return 1
  if [ "$mode" = "dev" ]; then
    # DeepSpeed builds against the torch just installed; its C++ ops are compiled when first used (DS_BUILD_OPS=0)
    DS_BUILD_OPS=0 "${pip[@]}" --require-hashes --no-deps --no-build-isolation -r "$lock/deepspeed.txt" || return 1
  fi
}

install_resolved() {
  "${pip[@]}" -c "$constraints" -e "$target"
  if [ "$mode" = "dev" ]; then
    # build isolation would fetch another (CUDA) torch for DeepSpeed's build
    "${pip[@]}" -c "$constraints" setuptools wheel
    DS_BUILD_OPS=0 "${pip[@]}" --no-build-isolation -c "$constraints" -r infra/requirements-deepspeed.txt
  fi
}

if locked_machine; then
  echo "setup: installing the project ($mode) into .venv from $lock/$mode.txt (versions and hashes locked)"
  if ! install_locked; then
    echo "setup: WARNING: the lock did not install here (above: why); resolving from pyproject.toml instead," \
      "so versions may differ from the lock's" >&2
    install_resolved
  fi
else
  echo "setup: WARNING: the lock is for Linux x86_64, CPython 3.11 and the CPU torch; resolving from" \
    "pyproject.toml instead (constraints: $constraints)" >&2
  install_resolved
fi
rm -f .venv/.installed-*
touch ".venv/.installed-$key-$mode"
