#!/usr/bin/env bash
# SRPPO on one node (8 GPUs): stage 1 SFT with stock OpenRLHF (deepspeed launcher, all local
# GPUs), stage 2 PPO with the coherent reward (OpenRLHF's ray.init() starts a local Ray with all
# local GPUs, or joins the cluster at RAY_ADDRESS if you set one). Everything else is in the YAML.
#
#   bash examples/scripts/srppo_single_node.sh                         # the default 8-GPU recipe
#   CONFIG=examples/configs/srppo_mistral_7b_min_overlap.yaml STAGES=ppo \
#       bash examples/scripts/srppo_single_node.sh --set ppo.actor_lr=5e-8
#   DRY_RUN=1 bash examples/scripts/srppo_single_node.sh               # print the commands only
#
# Tiny CPU variant (examples/notebooks/quickstart_cpu.ipynb runs it, and tests/test_notebooks.py
# that notebook; no GPU: the CPU dev mode declares fake GPUs to its own local Ray):
#   python -m openrlhf_coherent.devmode.tiny_models /tmp/tiny
#   CONFIG=examples/configs/tiny_cpu.yaml SRPPO_TINY_ROOT=/tmp/tiny bash examples/scripts/srppo_single_node.sh
#
# Environment: CONFIG (recipe YAML), STAGES (comma list, default all), DRY_RUN=1, PYTHON
# (default python). Arguments are passed to the recipe command (--set KEY=VALUE ...).
set -euo pipefail

CONFIG=${CONFIG:-examples/configs/srppo_llama3_8b_min_overlap.yaml}
PYTHON=${PYTHON:-python}
REPO=$(cd "$(dirname "${BASH_SOURCE[0]}")/../.." && pwd)

# The command as one shell-quoted line (copy-pasteable, parseable), secrets shown as *** (the
# project's one masker, openrlhf_coherent/redact.py, run as a file: it needs only Python).
quoted() {
  "$PYTHON" "$REPO/openrlhf_coherent/redact.py" "$@"
}

args=(--config "$CONFIG")
if [[ -n ${STAGES:-} ]]; then args+=(--stages "$STAGES"); fi
if [[ ${DRY_RUN:-0} == 1 ]]; then args+=(--dry-run); fi

echo "+ $(quoted "$PYTHON" -m openrlhf_coherent.cli.srppo "${args[@]}" "$@")"
exec "$PYTHON" -m openrlhf_coherent.cli.srppo "${args[@]}" "$@"
