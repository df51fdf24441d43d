#!/usr/bin/env bash
# GPU check of the batched recognizer on one H200: install, generate the full model, benchmark B = 1 … 1024.
#
# Run from the repository root on the device machine, with the wheels in $WHEELS (default ./wheels). The machine
# has no network, and a CUDA torch wheel does not fit the 64 MiB that travels with the work tree, so the script
# uses the machine's own CUDA torch and installs only FunASR and its small dependencies from $WHEELS, made here with
#   pip download --no-deps -d wheels funasr==1.4.16 kaldi-native-fbank PyYAML omegaconf antlr4-python3-runtime \
#       tqdm kaldiio librosa lazy-loader jaconv jamo rapidfuzz sentencepiece soundfile torch-complex
# Results (tables, JSON, nvidia-smi) go to $OUT. Budget: under 10 minutes (model ~1, each benchmark <= 200 s).
set -euo pipefail

WHEELS=${WHEELS:-wheels}
OUT=${OUT:-bench/out/gpu}
BATCHES=1,2,4,8,16,32,64,128,256,512,1024
mkdir -p "$OUT"

python3 -m venv --system-site-packages .venv-gpu  # keeps the machine's CUDA torch visible
. .venv-gpu/bin/activate
pip install -q --no-index --no-deps --find-links "$WHEELS" "$WHEELS"/*.whl
python - <<'PY' | tee "$OUT/env.txt"
import torch
assert torch.cuda.is_available(), "no CUDA torch on this machine"
print(torch.__version__, torch.version.cuda, torch.cuda.get_device_name(0))
PY
nvidia-smi > "$OUT/nvidia-smi.txt" || true

python -m tasks.modelgen --size full --out models/full  # ~880 MB of random weights, about a minute

bench() {  # $1: name, rest: extra arguments; ncpu 16 spreads the fbank work over the host's cores
    timeout 200 python -m bench.model_throughput --model models/full --device cuda --ncpu 16 \
        --batches "$BATCHES" --rounds 3 --warmup 1 --parity-streams 64 --out "$OUT/$1.json" "${@:2}" \
        2>&1 | tee "$OUT/$1.txt"
}
bench fp32 || true  # fp32 on CUDA: no exact GEMM routing; texts compared with FunASR's per-stream fp32 path
bench bf16 --dtype bfloat16 || true
exec ls -l "$OUT"
