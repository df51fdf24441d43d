#!/usr/bin/env bash
# Create .venv (if missing) and install the service; with --dev also what tests and benchmarks need.
set -euo pipefail
cd "$(dirname "$0")/.."

PYTHON=${PYTHON:-python3}
VENV=${VENV:-.venv}
[ -x "$VENV/bin/python" ] || "$PYTHON" -m venv "$VENV"
pip=("$VENV/bin/python" -m pip install --quiet --disable-pip-version-check)

"${pip[@]}" -r requirements.txt
# FunASR without its declared dependencies: requirements.txt lists the ones its streaming path imports.
"${pip[@]}" --no-deps funasr==1.4.16
if [[ "${1:-}" == "--dev" ]]; then
  "${pip[@]}" -r requirements-dev.txt
fi
echo "installed into $VENV"
