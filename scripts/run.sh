#!/usr/bin/env bash
# Install and run the whole service locally: Redis, one worker, the gateway and Flower (Procfile, via honcho).
# With no ASR_MODEL set, workers serve the embedded tiny random-weight model (meaningless transcripts).
set -euo pipefail
cd "$(dirname "$0")/.."

scripts/install.sh
scripts/redis.sh
export PATH="$PWD/.venv/bin:$PATH" PYTHONPATH="$PWD${PYTHONPATH:+:$PYTHONPATH}"
if [[ -z "${ASR_MODEL:-}" ]]; then
  echo "ASR_MODEL is not set: generating and serving the embedded tiny RANDOM-WEIGHT model (transcripts are meaningless)"
  python -m tasks.modelgen --size tiny --out models/paraformer-zh-streaming-tiny
fi
echo "gateway: ws://${ASR_BIND:-127.0.0.1:8000}/ws   health: http://${ASR_BIND:-127.0.0.1:8000}/healthz   flower: http://127.0.0.1:5555"
exec honcho start -f Procfile
