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
# Flower's API can shut workers down: it gets basic auth, with a password generated on the first run and kept in
# var/ (mode 600) so a browser's saved login keeps working. Exported for the Procfile's flower line.
credentials=var/flower-credentials
if [[ ! -s $credentials ]]; then
  mkdir -p var
  (umask 077 && python -c 'import secrets; print("asr:" + secrets.token_urlsafe(18))' >"$credentials")
fi
chmod 600 "$credentials"
FLOWER_BASIC_AUTH=$(<"$credentials")
export FLOWER_BASIC_AUTH
echo "gateway: ws://${ASR_BIND:-127.0.0.1:8000}/ws   page: http://${ASR_BIND:-127.0.0.1:8000}/" \
  "  files: http://${ASR_BIND:-127.0.0.1:8000}/api/transcribe   health: http://${ASR_BIND:-127.0.0.1:8000}/healthz" \
  "  flower: http://127.0.0.1:${ASR_FLOWER_PORT:-5555} (user ${FLOWER_BASIC_AUTH%%:*}," \
  "password ${FLOWER_BASIC_AUTH#*:}, from $credentials)"
exec honcho start -f Procfile
