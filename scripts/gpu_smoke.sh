#!/usr/bin/env bash
# GPU smoke test, after installing on one CUDA GPU (see README "Installing on a GPU cluster"):
#   bash scripts/gpu_smoke.sh            # writes gpu_smoke_out/
# 1. pytest -m gpu: the coherent actor's scoring in bf16 against fp32 and against OpenRLHF's Actor
#    forward; two SRPPO steps through vLLM when vLLM is installed.
# 2. The scorer benchmark on CUDA at Llama-3-8B width and vocabulary (hidden 4096, vocab 128256;
#    LAYERS layers, default 32): compare the score path's tokens/s with the best plain row.
# Never run by the authors (no GPU was available): please report what it prints.
set -euo pipefail
PYTHON=${PYTHON:-python}
LAYERS=${LAYERS:-32}
OUT=${OUT:-gpu_smoke_out}
mkdir -p "$OUT"
"$PYTHON" -c 'import torch, sys; sys.exit(0 if torch.cuda.is_available() else "gpu_smoke: no CUDA GPU visible")'
OPENRLHF_COHERENT_DEVICE=cuda "$PYTHON" -m pytest -m gpu -q -rs -s tests/test_gpu_smoke.py 2>&1 | tee "$OUT/pytest.txt"
"$PYTHON" -m benchmarks.scoring_throughput --device cuda --hidden 4096 --vocab 128256 --layers "$LAYERS" \
  --out "$OUT/scoring_throughput_cuda.json" 2>&1 | tee "$OUT/scoring_throughput.txt"
