"""Stage 2 of the demo: PPO through this package's entry point, on CPU, and its per-step metrics.

`run_ppo` runs `python -m openrlhf_coherent.cli.train_ppo_ray` in a subprocess (the same command a
user runs on a cluster, with tiny sizes), with either the coherent reward (SRPPO) or, for the
upper-bound baseline, the task's exact checker as an OpenRLHF reward function
(`--reward.remote_url demo/checker_reward.py`). It returns the per-step status dicts OpenRLHF
prints ("Global step N: {...}") and the path of the trained model.
"""

from __future__ import annotations

import ast
import os
import re
import subprocess
import sys
import time
from dataclasses import dataclass, field
from typing import Dict, List, Optional, Sequence

CHECKER_REWARD = os.path.join(os.path.dirname(os.path.abspath(__file__)), "checker_reward.py")
STEP_LINE = re.compile(r"Global step (\d+): (\{.*\})")


@dataclass
class PPOConfig:
    """Tiny-model PPO settings for a 2-core CPU. The estimator is a per-prompt baseline
    (reinforce_baseline): no critic process, which saves a quarter of the start-up."""

    rollout_batch_size: int = 16  # prompts per step
    n_samples_per_prompt: int = 4
    train_batch_size: int = 64
    micro_batch_size: int = 16
    max_new_tokens: int = 24
    max_len: int = 64
    actor_lr: float = 2e-5
    kl_coef: float = 0.05
    estimator: str = "reinforce_baseline"
    temperature: float = 1.0
    max_samples: int = 320  # prompts used: max_samples / rollout_batch_size steps
    extra: List[str] = field(default_factory=list)
    # OpenMP threads of every Ray worker (OMP_NUM_THREADS). None: the dev mode's default, one per
    # worker, fastest for tiny models whose 5-6 workers share a laptop's cores.
    worker_threads: Optional[int] = None


@dataclass
class PPOResult:
    model_path: str
    steps: List[Dict[str, float]]
    seconds: float
    log_path: str


def ppo_argv(sft: str, prompts: str, out_dir: str, cfg: PPOConfig, seed: int, reward_flags: Sequence[str]) -> List[str]:
    return [
        "--actor.model_name_or_path", sft,
        *reward_flags,
        "--data.prompt_dataset", prompts, "--data.input_key", "input", "--data.label_key", "label",
        "--data.apply_chat_template", "--data.max_samples", str(cfg.max_samples),
        "--data.max_len", str(cfg.max_len), "--rollout.max_new_tokens", str(cfg.max_new_tokens),
        "--rollout.temperature", str(cfg.temperature),
        "--rollout.batch_size", str(cfg.rollout_batch_size),
        "--rollout.n_samples_per_prompt", str(cfg.n_samples_per_prompt),
        "--rollout.micro_batch_size", str(cfg.micro_batch_size),
        "--train.batch_size", str(cfg.train_batch_size), "--train.micro_batch_size", str(cfg.micro_batch_size),
        "--train.seed", str(seed),
        "--algo.advantage.estimator", cfg.estimator, "--algo.kl.init_coef", str(cfg.kl_coef),
        "--actor.adam.lr", str(cfg.actor_lr), "--actor.lr_warmup_ratio", "0",
        "--actor.num_gpus_per_node", "1", "--ref.num_gpus_per_node", "1", "--reward.num_gpus_per_node", "1",
        "--vllm.num_engines", "1",
        "--ds.zero_stage", "0", "--ds.param_dtype", "fp32", "--ds.attn_implementation", "eager",
        "--ckpt.output_dir", os.path.join(out_dir, "model"), "--ckpt.path", os.path.join(out_dir, "ckpt"),
        "--logger.tensorboard_dir", os.path.join(out_dir, "tensorboard"),
        *cfg.extra,
    ]  # fmt: skip


def coherent_reward_flags(base: str, out_dir: str, guard_flags: Sequence[str] = ()) -> List[str]:
    return [
        "--reward.model_name_or_path", "coherent", "--coherent.base_model", base,
        "--coherent.rollout_log", os.path.join(out_dir, "rollouts.jsonl"), *guard_flags,
    ]  # fmt: skip


def checker_reward_flags() -> List[str]:
    return ["--reward.remote_url", CHECKER_REWARD]


def parse_steps(log: str) -> List[Dict[str, float]]:
    """OpenRLHF prints each step's status as a Python dict literal; literal_eval parses only literals."""
    steps = []
    for match in STEP_LINE.finditer(log):
        status = ast.literal_eval(match.group(2))
        status["step"] = int(match.group(1))
        steps.append({k: v for k, v in status.items() if isinstance(v, (int, float))})
    return steps


def run_ppo(
    sft: str,
    prompts: str,
    out_dir: str,
    reward_flags: Sequence[str],
    cfg: Optional[PPOConfig] = None,
    seed: int = 0,
    timeout: int = 900,
) -> PPOResult:
    cfg = cfg or PPOConfig()
    os.makedirs(out_dir, exist_ok=True)
    argv = ppo_argv(sft, prompts, out_dir, cfg, seed, reward_flags)
    log_path = os.path.join(out_dir, "train.log")
    env = dict(os.environ, TOKENIZERS_PARALLELISM="false", PYTHONUNBUFFERED="1")
    if cfg.worker_threads:
        env["OMP_NUM_THREADS"] = str(cfg.worker_threads)  # the driver passes it on to its Ray workers
    start = time.time()
    with open(log_path, "w") as log_file:
        proc = subprocess.run(
            [sys.executable, "-m", "openrlhf_coherent.cli.train_ppo_ray", *argv],
            stdout=log_file, stderr=subprocess.STDOUT, env=env, timeout=timeout,
        )  # fmt: skip
    log = open(log_path).read()
    if proc.returncode != 0:
        raise RuntimeError(f"PPO run failed (exit {proc.returncode}), see {log_path}:\n{log[-3000:]}")
    return PPOResult(os.path.join(out_dir, "model"), parse_steps(log), time.time() - start, log_path)
