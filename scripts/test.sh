#!/usr/bin/env bash
# Install everything the tests need, make sure Redis is up, and run the test suite (extra args go to pytest).
set -euo pipefail
cd "$(dirname "$0")/.."

scripts/install.sh --dev
scripts/browser-deps.sh
ASR_REDIS_URL=${ASR_TEST_REDIS_URL:-redis://127.0.0.1:6379/15} scripts/redis.sh
export PYTHONPATH="$PWD${PYTHONPATH:+:$PYTHONPATH}"
if [[ $# -eq 0 ]]; then  # the whole suite (CI): lint and types first, as `make lint` does
  .venv/bin/ruff check .
  .venv/bin/ruff format --check .
  .venv/bin/mypy
fi
exec .venv/bin/python -m pytest "$@"
