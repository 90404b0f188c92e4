#!/usr/bin/env bash
# SRPO on UltraFeedback (binarized) with the paper's settings (Choi et al., appendix D):
# beta 1.3, per-token averaged log-likelihoods, lr 1.25e-6 with cosine decay to 1.25e-7
# (--min_lr_ratio 0.1), 128 warm-up steps (~6% of one epoch of 64k/32 steps), effective batch 32,
# 1 epoch, Adam (0.9, 0.999), full fine-tuning from the SFT model. Prompts go through the
# tokenizer's chat template; the revision request is templates/srpo/chat_revision.txt (the paper
# does not print its UltraFeedback revision prompt). alpha as in train_srpo_tldr.sh.
#
# Data: OpenRLHF preference JSONL with chat messages, e.g. HuggingFaceH4/ultrafeedback_binarized
# exported to JSONL: {"prompt": "...", "chosen": [{"role": "user", ...}, {"role": "assistant", ...}], ...};
# either --data.prompt_key prompt with message-list completions, or no prompt key with whole
# conversations (the last message is the completion), as for openrlhf.cli.train_dpo.
#
#   MODEL=/models/llama-3.1-8b-sharegpt-sft DATA=ultrafeedback.jsonl bash examples/srpo/train_srpo_ultrafeedback.sh
#   DRY_RUN=1 bash examples/srpo/train_srpo_ultrafeedback.sh
set -euo pipefail
ROOT=$(cd "$(dirname "${BASH_SOURCE[0]}")/../.." && pwd)
TEMPLATES=${TEMPLATES:-$ROOT/openrlhf_coherent/templates/srpo}
MODEL=${MODEL:-/path/to/sft-model}
DATA=${DATA:-/path/to/ultrafeedback_binarized.jsonl}
OUT=${OUT:-runs/srpo_ultrafeedback}
ALPHA=${ALPHA:-0.5}

cmd=(
  deepspeed --module openrlhf_coherent.cli.train_srpo
  --model.model_name_or_path "$MODEL"
  --data.dataset "$DATA" --data.chosen_key chosen --data.rejected_key rejected
  --data.apply_chat_template --data.max_len 2048
  --srpo.revision_template "$TEMPLATES/chat_revision.txt"
  --srpo.beta 1.3 --srpo.alpha "$ALPHA" --srpo.average_log_prob
  --train.max_epochs 1 --train.batch_size 32 --train.micro_batch_size 1
  --adam.lr 1.25e-6 --adam.betas 0.9 0.999
  --lr_scheduler cosine_with_min_lr --min_lr_ratio 0.1 --lr_warmup_ratio 0.064
  --ds.zero_stage 3 --ds.param_dtype bf16 --model.gradient_checkpointing_enable
  --ckpt.output_dir "$OUT" --ckpt.path "$OUT/ckpt" --ckpt.save_steps 500
  --logger.logging_steps 1 --logger.tensorboard_dir "$OUT/tensorboard"
)
if [[ "${DRY_RUN:-0}" == 1 ]]; then
  printf '%q ' "${cmd[@]}"
  echo
else
  exec "${cmd[@]}"
fi
