#!/usr/bin/env bash
# Create or refresh the local virtual environment in .venv.
#   bash scripts/setup.sh          runtime dependencies + offline assets
#   bash scripts/setup.sh --test   ... plus the test extras (torch CPU, pytest), and, as
#                                  root with apt-get, bubblewrap (the Python tool's sandbox)
# Re-running is cheap: nothing is reinstalled unless a requirements file changed.
set -euo pipefail
cd "$(dirname "$0")/.."
PY=${PYTHON:-python3}
want_test=0
[[ "${1:-}" == "--test" ]] && want_test=1

# The Python tool refuses to run model code without bubblewrap (rlpt_jax/envs/python_tool.py),
# and its tests must run in CI (as root), so --test installs it where it can. `apt-get update`
# only when the install fails: a stale package list is the usual reason, and it is slow.
apt_bwrap=(apt-get install -y -qq --no-install-recommends bubblewrap)
if ! command -v bwrap >/dev/null; then
  if [[ $want_test == 1 && $(id -u) == 0 ]] && command -v apt-get >/dev/null; then
    echo "[setup] installing bubblewrap (the Python tool's sandbox)"
    if ! "${apt_bwrap[@]}"; then
      apt-get update -qq
      "${apt_bwrap[@]}"
    fi
  else
    echo "[setup] bubblewrap (bwrap) is missing: the Python tool will refuse to run code." >&2
    echo "[setup]   install it: sudo apt-get install bubblewrap (Debian/Ubuntu)," \
      "sudo dnf install bubblewrap (Fedora), or run this script with --test as root" >&2
  fi
fi

if [[ ! -x .venv/bin/python ]]; then
  echo "[setup] creating .venv"
  "$PY" -m venv .venv
  .venv/bin/pip install -q --upgrade pip
fi

files=(requirements.txt requirements-assets.txt pyproject.toml)
stamp=.setup-stamp
if [[ $want_test == 1 ]]; then files+=(requirements-test.txt); stamp=.setup-stamp-test; fi
digest=$(cat "${files[@]}" | sha256sum | cut -d' ' -f1)
if [[ -f $stamp && "$(cat $stamp)" == "$digest" ]]; then
  echo "[setup] .venv is up to date"
  exit 0
fi

echo "[setup] installing dependencies into .venv (first run takes a few minutes)"
reqs=(-r requirements.txt)
[[ $want_test == 1 ]] && reqs+=(-r requirements-test.txt)
.venv/bin/pip install -q "${reqs[@]}"
.venv/bin/pip install -q --no-deps -r requirements-assets.txt
.venv/bin/pip install -q --no-deps -e .
echo "$digest" > $stamp
echo "[setup] done"
