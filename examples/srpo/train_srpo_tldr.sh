#!/usr/bin/env bash
# SRPO on Reddit TL;DR with the paper's settings (Choi et al., sec. 6 "Preference Training"):
# beta 0.01, lr 2e-6, 5 epochs, effective batch 128, AdamW (0.9, 0.999) with weight decay 0.1,
# cosine schedule, 150 warm-up steps (~4% of 5 x 93k/128 steps), LoRA rank 16 / alpha 32,
# summed log-likelihoods, the paper's TL;DR 0-revision and N-revision templates (appendix C.1.1).
# alpha (eq. 17) is not stated for the main runs; 0.5 weighs both losses (appendix B sweeps it).
#
# Data: OpenRLHF preference JSONL, one pair per line, the prompt being the post block the
# templates' {prompt} stands for:
#   {"prompt": "SUBREDDIT: r/...\nTITLE: ...\nPOST: ...", "chosen": " summary", "rejected": " summary"}
#
#   MODEL=/models/llama-7b-tldr-sft DATA=tldr_prefs.jsonl bash examples/srpo/train_srpo_tldr.sh
#   DRY_RUN=1 bash examples/srpo/train_srpo_tldr.sh     # print the command only
set -euo pipefail
ROOT=$(cd "$(dirname "${BASH_SOURCE[0]}")/../.." && pwd)
TEMPLATES=${TEMPLATES:-$ROOT/openrlhf_coherent/templates/srpo}
MODEL=${MODEL:-/path/to/tldr-sft-model}
DATA=${DATA:-/path/to/tldr_preferences.jsonl}
OUT=${OUT:-runs/srpo_tldr}
ALPHA=${ALPHA:-0.5}

cmd=(
  deepspeed --module openrlhf_coherent.cli.train_srpo
  --model.model_name_or_path "$MODEL"
  --data.dataset "$DATA"
  --data.prompt_key prompt --data.chosen_key chosen --data.rejected_key rejected
  --data.max_len 1024
  --srpo.generation_template "$TEMPLATES/tldr_generation.txt"
  --srpo.revision_template "$TEMPLATES/tldr_revision.txt"
  --srpo.beta 0.01 --srpo.alpha "$ALPHA"
  --train.max_epochs 5 --train.batch_size 128 --train.micro_batch_size 2
  --adam.lr 2e-6 --adam.betas 0.9 0.999 --adam.weight_decay 0.1
  --lr_scheduler cosine_with_min_lr --lr_warmup_ratio 0.04
  --ds.lora.rank 16 --ds.lora.alpha 32
  --ds.zero_stage 2 --ds.param_dtype bf16 --model.gradient_checkpointing_enable
  --ckpt.output_dir "$OUT" --ckpt.path "$OUT/ckpt" --ckpt.save_steps 500
  --logger.logging_steps 1 --logger.tensorboard_dir "$OUT/tensorboard"
)
if [[ "${DRY_RUN:-0}" == 1 ]]; then
  printf '%q ' "${cmd[@]}"
  echo
else
  exec "${cmd[@]}"
fi
