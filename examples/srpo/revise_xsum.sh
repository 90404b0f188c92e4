#!/usr/bin/env bash
# N-revision inference (paper sec. 6): y_0 from the 0-revision prompt, then y_n from R(x, y_{n-1}),
# n = 1..5, here with the XSum templates (appendix C.1.2) for the out-of-distribution test of a
# TL;DR-trained model. Add --pick_by coherent --sft_model SFT --base_model BASE to keep, per
# prompt, the revision with the highest coherent reward log p_SFT(y|x) - log p_base(y|x).
#
# Data: JSONL, {"prompt": "ID: ...\nTITLE: ...\nARTICLE: ..."} per line.
#   MODEL=runs/srpo_tldr DATA=xsum_test.jsonl bash examples/srpo/revise_xsum.sh
#   DRY_RUN=1 bash examples/srpo/revise_xsum.sh
set -euo pipefail
ROOT=$(cd "$(dirname "${BASH_SOURCE[0]}")/../.." && pwd)
TEMPLATES=${TEMPLATES:-$ROOT/openrlhf_coherent/templates/srpo}
MODEL=${MODEL:-runs/srpo_tldr}
DATA=${DATA:-/path/to/xsum_prompts.jsonl}
OUT=${OUT:-runs/srpo_tldr/xsum_revisions.jsonl}

cmd=(
  python -m openrlhf_coherent.cli.revise
  --model "$MODEL" --input "$DATA" --output "$OUT" --prompt_key prompt
  --generation_template "$TEMPLATES/xsum_generation.txt"
  --revision_template "$TEMPLATES/xsum_revision.txt"
  --num_revisions 5 --max_new_tokens 128
  --temperature 0.7 --top_p 1.0 --seed 0
)
if [[ "${DRY_RUN:-0}" == 1 ]]; then
  printf '%q ' "${cmd[@]}"
  echo
else
  exec "${cmd[@]}"
fi
