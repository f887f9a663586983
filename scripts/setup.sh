#!/usr/bin/env bash
# Create or refresh the local virtual environment in .venv.
#   bash scripts/setup.sh          runtime dependencies + offline assets
#   bash scripts/setup.sh --test   ... plus the test extras (torch CPU, pytest)
# Re-running is cheap: nothing is reinstalled unless a requirements file changed.
set -euo pipefail
cd "$(dirname "$0")/.."
PY=${PYTHON:-python3}
want_test=0
[[ "${1:-}" == "--test" ]] && want_test=1

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
