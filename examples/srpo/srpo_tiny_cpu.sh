#!/usr/bin/env bash
# SRPO end to end on a CPU in a few minutes with tiny random models (no model hub): build the
# models, write 4 preference pairs, train 2 epochs with train_srpo (CPU dev mode is automatic),
# then 2 revisions per prompt, picked by the coherent reward. The cluster command lines are the
# other scripts here; only model paths, data and sizes differ.
#   bash examples/srpo/srpo_tiny_cpu.sh [OUT]      DRY_RUN=1: print the commands only
set -euo pipefail
OUT=${1:-runs/tiny_srpo}
run() {
  if [[ "${DRY_RUN:-0}" == 1 ]]; then printf '%q ' "$@"; echo; else "$@"; fi
}
run python -m openrlhf_coherent.devmode.tiny_models "$OUT"
if [[ "${DRY_RUN:-0}" != 1 ]]; then
  cat > "$OUT/prefs.jsonl" <<'JSONL'
{"prompt": "what is the color of the sun ?", "chosen": "the sun is yellow .", "rejected": "the sun is blue ."}
{"prompt": "say hello", "chosen": "hello !", "rejected": "no ."}
{"prompt": "how many legs has a dog ?", "chosen": "a dog has four .", "rejected": "a dog has two ."}
{"prompt": "name a big river", "chosen": "the big river is blue .", "rejected": "a cat ."}
JSONL
  echo "user : {prompt} answer : {completion} write a good answer :" > "$OUT/revision.txt"
fi
run python -m openrlhf_coherent.cli.train_srpo \
  --model.model_name_or_path "$OUT/sft" --data.dataset "$OUT/prefs.jsonl" \
  --data.prompt_key prompt --data.chosen_key chosen --data.rejected_key rejected --data.max_len 64 \
  --srpo.revision_template "$OUT/revision.txt" --srpo.beta 0.1 --srpo.alpha 0.5 \
  --train.max_epochs 2 --train.batch_size 4 --train.micro_batch_size 2 --adam.lr 1e-3 --lr_warmup_ratio 0 \
  --ds.zero_stage 2 --ds.param_dtype fp32 --ds.attn_implementation eager \
  --ckpt.output_dir "$OUT/srpo" --ckpt.path "$OUT/srpo/ckpt"
run python -m openrlhf_coherent.cli.revise \
  --model "$OUT/srpo" --input "$OUT/prompts.jsonl" --prompt_key input --output "$OUT/revisions.jsonl" \
  --revision_template "$OUT/revision.txt" --num_revisions 2 --max_new_tokens 12 \
  --temperature 1.0 --top_p 1.0 --seed 0 \
  --pick_by coherent --sft_model "$OUT/sft" --base_model "$OUT/base"
