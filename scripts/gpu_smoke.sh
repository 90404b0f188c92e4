#!/usr/bin/env bash
# GPU smoke test, after installing on one CUDA GPU (see docs/cluster.md, "Installing on a GPU cluster"):
#   bash scripts/gpu_smoke.sh            # writes gpu_smoke_out/ (OUT=folder: another; never one that holds files)
# 1. pytest -m gpu: the coherent actor's scoring in bf16 against fp32 and against OpenRLHF's Actor
#    forward, plainly and inside a DeepSpeed bf16 eval engine (ZeRO-0 and ZeRO-3); two SRPPO steps
#    through vLLM when vLLM is installed.
# 2. The scorer benchmark on CUDA near Llama-3-8B's shape (hidden 4096, MLP 14336, vocab 128256,
#    8 key/value heads, LAYERS layers, default 32; but 64 query heads of 64 where Llama-3-8B has 32
#    of 128, as in the run recorded in docs/performance.md): two such models in bf16 take 32 GB, the plain rows'
#    full-vocabulary logits up to about 26 GB more with BATCH_TOKENS=4096. Compare the score path's
#    tokens/s with the best plain row.
# 3. The coherent actor's forward against OpenRLHF's on one micro-batch at Llama-3-8B's shape (time,
#    peak memory).
# versions.txt records the GPU and the installed versions (flash-attn absent: OpenRLHF's fallbacks ran).
# Every part runs even if an earlier one fails; the exit status is non-zero if any failed.
set -uo pipefail
PYTHON=${PYTHON:-python}
LAYERS=${LAYERS:-32}
BATCH_TOKENS=${BATCH_TOKENS:-4096}
OUT=${OUT:-gpu_smoke_out}
if [ -n "$(ls -A "$OUT" 2>/dev/null)" ]; then  # a finished run's results are never overwritten
  echo "gpu_smoke: OUT=$OUT already holds files; pass a new folder (OUT=gpu_smoke_out2 bash $0)" >&2
  exit 2
fi
mkdir -p "$OUT" && OUT=$(cd "$OUT" && pwd) || exit 1
cd "$(dirname "$0")/.." || exit 1  # the repository's root: tests/ and benchmarks/ are there
"$PYTHON" -c 'import torch, sys; sys.exit(0 if torch.cuda.is_available() else "gpu_smoke: no CUDA GPU visible")' || exit 1
status=0
{ date -u; nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv,noheader 2>&1
  "$PYTHON" -m pip list 2>/dev/null | grep -i -E '^(torch|transformers|deepspeed|openrlhf|ray|vllm|flash.attn) '; } > "$OUT/versions.txt"
OPENRLHF_COHERENT_DEVICE=cuda "$PYTHON" -m pytest -m gpu -q -rs -s -p no:cacheprovider tests/test_gpu_smoke.py 2>&1 \
  | tee "$OUT/pytest.txt" || status=1
"$PYTHON" -m benchmarks.scoring_throughput --device cuda --vocab 128256 --hidden 4096 --intermediate 14336 --kv_heads 8 \
  --layers "$LAYERS" --rows 256 --mean_prompt 128 --mean_response 128 --batch_tokens "$BATCH_TOKENS" \
  --out "$OUT/scoring_throughput_cuda.json" 2>&1 | tee "$OUT/scoring_throughput.txt" || status=1
"$PYTHON" -m benchmarks.reward_forward --device cuda --layers "$LAYERS" --out "$OUT/reward_forward_cuda.json" 2>&1 \
  | tee "$OUT/reward_forward.txt" || status=1
exit $status
