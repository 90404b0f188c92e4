#!/usr/bin/env bash
# SRPPO end to end on a CPU in about a minute, with tiny random models (no model hub).
# The same command line, with real model paths and GPU counts, is how SRPPO runs on a cluster:
# the only SRPPO-specific flags are --reward.model_name_or_path coherent and --coherent.*.
set -euo pipefail
OUT=${1:-runs/tiny_srppo}
python -m openrlhf_coherent.devmode.tiny_models "$OUT"
python -m openrlhf_coherent.cli.train_ppo_ray \
  --actor.model_name_or_path "$OUT/sft" \
  --critic.model_name_or_path "$OUT/sft" \
  --reward.model_name_or_path coherent \
  --coherent.base_model "$OUT/base" \
  --coherent.rollout_log "$OUT/rollouts.jsonl" \
  --data.prompt_dataset "$OUT/prompts.jsonl" --data.input_key input --data.apply_chat_template \
  --data.max_len 64 --rollout.max_new_tokens 12 \
  --rollout.batch_size 4 --rollout.micro_batch_size 2 --train.batch_size 4 --train.micro_batch_size 2 \
  --actor.num_gpus_per_node 1 --ref.num_gpus_per_node 1 --critic.num_gpus_per_node 1 \
  --reward.num_gpus_per_node 1 --vllm.num_engines 1 \
  --ds.zero_stage 2 --ds.attn_implementation eager \
  --actor.adam.lr 1e-4 --critic.adam.lr 1e-4 --algo.kl.init_coef 0.01 \
  --logger.tensorboard_dir "$OUT/tensorboard" --ckpt.output_dir "$OUT/ckpt"
