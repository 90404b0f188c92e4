#!/usr/bin/env bash
# SRPPO on a running multi-node Ray cluster: submits the recipe as a Ray job (submit_job.py: Ray's
# JobSubmissionClient, as `ray job submit` but with the arguments passed unchanged).
# The job's driver runs on the head node: stage 1 SFT there (deepspeed on the head's GPUs, unless
# the YAML's sft.launcher_args give a hostfile), stage 2 PPO across the cluster (OpenRLHF's
# ray.init() joins it and places actor, critic, reference, coherent reward and vLLM engines on
# its GPUs). Start the cluster first (`ray start --head` / `ray start --address`), or let
# srppo_slurm.sbatch do it.
#
#   RAY_ADDRESS=http://HEAD_IP:8265 CONFIG=examples/configs/srppo_llama3_8b_min_overlap.yaml \
#       OUTPUT_DIR=/shared/runs/srppo1 bash examples/scripts/srppo_multi_node.sh [--set KEY=VALUE ...]
#   DRY_RUN=1 RAY_ADDRESS=... bash examples/scripts/srppo_multi_node.sh   # print what it would submit
#
# The job runs in a copy of WORKING_DIR (default: this repository, without .venv, runs/, .git)
# unpacked on the head node, so every path in the YAML must be absolute on a filesystem that all
# nodes share (or a hub id). The job does not see this shell's environment: list the variables
# it needs in FORWARD_ENV (they go into the runtime_env's env_vars). Secrets (HF_TOKEN,
# WANDB_API_KEY) are not forwarded by default: Ray writes runtime_env values into its own logs on
# the cluster. Have them in the environment `ray start` runs in (srppo_slurm.sbatch does: its srun
# steps inherit the submitting shell's), or add them to FORWARD_ENV knowing that.
#
# Environment: RAY_ADDRESS (the head's dashboard, http://HOST:8265; required), CONFIG (relative
# to WORKING_DIR or absolute), OUTPUT_DIR (absolute; passed as --set output_dir=...), STAGES,
# DRY_RUN=1, WORKING_DIR, FORWARD_ENV (space-separated variable names; default: SRPPO_TINY_ROOT
# DATA_DIR OPENRLHF_COHERENT_DEVICE HF_HOME), RUNTIME_ENV_JSON (replaces the generated runtime_env
# entirely), PYTHON (for the job and here, with Ray installed; default python).
set -euo pipefail

: "${RAY_ADDRESS:?set RAY_ADDRESS to the dashboard address of the Ray head, e.g. http://10.0.0.1:8265}"
CONFIG=${CONFIG:-examples/configs/srppo_llama3_8b_min_overlap.yaml}
PYTHON=${PYTHON:-python}
REPO=$(cd "$(dirname "${BASH_SOURCE[0]}")/../.." && pwd)
WORKING_DIR=${WORKING_DIR:-$REPO}
FORWARD_ENV=${FORWARD_ENV:-SRPPO_TINY_ROOT DATA_DIR OPENRLHF_COHERENT_DEVICE HF_HOME}

# The command as one shell-quoted line (copy-pasteable, parseable), secrets shown as *** (the
# project's one masker, openrlhf_coherent/redact.py, run as a file: it needs only Python).
quoted() {
  "$PYTHON" "$REPO/openrlhf_coherent/redact.py" "$@"
}

if [[ -z ${RUNTIME_ENV_JSON:-} ]]; then
  # Built by Python so every value is JSON-escaped; only variables that are set are forwarded.
  RUNTIME_ENV_JSON=$(WORKING_DIR="$WORKING_DIR" FORWARD_ENV="$FORWARD_ENV" REPO="$REPO" "$PYTHON" -c '
import json, os, sys
sys.path.insert(0, os.path.join(os.environ["REPO"], "openrlhf_coherent"))
from redact import SECRET_ENV_NAME  # the one masker, as a file: standard library only
env = {k: os.environ[k] for k in os.environ["FORWARD_ENV"].split() if k in os.environ}
# The driver writes its device decision (cpu or cuda) into the env of its workers: a forwarded "auto" or
# "CUDA" would be a conflicting value there (refused at the PPO stage, after SFT ran). Forward only
# an explicit decision, spelled as the driver spells it.
device = env.pop("OPENRLHF_COHERENT_DEVICE", "").strip().lower()
if device not in ("", "auto"):
    env["OPENRLHF_COHERENT_DEVICE"] = device
secret = [k for k in env if SECRET_ENV_NAME.search(k)]
if secret:
    print("srppo_multi_node: forwarding " + " ".join(secret) + " in the runtime_env: Ray writes its values into "
          "its logs on the cluster (runtime_env_agent.log); set them where ray start runs instead", file=sys.stderr)
print(json.dumps({
    "working_dir": os.environ["WORKING_DIR"],
    # Not uploaded: environments, caches, build output, every output folder the repository writes, weights.
    "excludes": [".venv", ".git", "__pycache__", "*.egg-info", "build", "dist", "runs", "demo_out", "demo_out_quick",
                 "demo_real_out", "demo_real_out_quick", "sweep_out", "oracle_budget_out", "hacking_out*",
                 "gpu_smoke_out*", "*.safetensors", "*.pt", "*.pth", "*.bin"],
    "env_vars": env,
}))')
fi

entrypoint=("$PYTHON" -m openrlhf_coherent.cli.srppo --config "$CONFIG")
if [[ -n ${STAGES:-} ]]; then entrypoint+=(--stages "$STAGES"); fi
if [[ -n ${OUTPUT_DIR:-} ]]; then
  # A relative path would resolve inside the job's temporary copy of WORKING_DIR.
  if [[ $OUTPUT_DIR != /* ]]; then
    echo "srppo_multi_node: OUTPUT_DIR must be an absolute path on a shared filesystem, got $OUTPUT_DIR" >&2
    exit 2
  fi
  entrypoint+=(--set "output_dir=$OUTPUT_DIR")
fi
entrypoint+=("$@")

# What is printed (and so lands in job logs) shows every secret as *** (redact.py: the value of
# any env var whose name contains TOKEN, KEY, SECRET, PASSWORD, PASSWD, CREDENTIAL or AUTH, of
# secret-named flags, and those values anywhere else). Only the submission gets the real values.
SHOWN_ENV_JSON=$("$PYTHON" "$REPO/openrlhf_coherent/redact.py" --json "$RUNTIME_ENV_JSON")

# Submitted through Ray's JobSubmissionClient with the argv itself (submit_job.py): `ray job submit`
# would re-quote it for Windows and run it with /bin/sh, changing any argument with $, \, quotes
# or globs. What is printed is the command that runs, secrets masked.
submit=("$PYTHON" "$REPO/openrlhf_coherent/submit_job.py" --address "$RAY_ADDRESS" --runtime-env-json "$RUNTIME_ENV_JSON" --)
shown=("$PYTHON" "$REPO/openrlhf_coherent/submit_job.py" --address "$RAY_ADDRESS" --runtime-env-json "$SHOWN_ENV_JSON" --)
if [[ ${DRY_RUN:-0} == 1 ]]; then
  # Show the submission, then the recipe's own dry run (every stage's exact command), run here.
  echo "+ $(quoted "${shown[@]}" "${entrypoint[@]}")"
  cd "$WORKING_DIR"
  exec "${entrypoint[@]}" --dry-run
fi
echo "+ $(quoted "${shown[@]}" "${entrypoint[@]}")"
exec "${submit[@]}" "${entrypoint[@]}"
