"""Helpers for the end-to-end tests: the tiniest real SRPPO command line, running it, reading its logs."""

import json
import os
import re
import subprocess
import sys

import pytest

from conftest import plain_coherent_reward

PROMPTS = [
    "what is the color of the sun ?",
    "say hello",
    "how many legs has a dog ?",
    "name a big river",
    "tell me a short story",
    "what is two plus two ?",
    "write a long sentence",
    "count to three",
]


def tiny_srppo_argv(sft, base, prompts, out_dir, *extra):
    """The smallest real SRPPO run: 8 prompts, 4 per rollout batch -> 2 PPO steps."""
    return [
        "--actor.model_name_or_path", sft,
        "--reward.model_name_or_path", "coherent",
        "--coherent.base_model", base,
        "--coherent.rollout_log", os.path.join(out_dir, "rollouts.jsonl"),
        "--data.prompt_dataset", prompts,
        "--data.input_key", "input",
        "--data.apply_chat_template",
        "--data.max_samples", "8",
        "--data.max_len", "64",
        "--rollout.max_new_tokens", "12",
        "--rollout.batch_size", "4",
        "--rollout.micro_batch_size", "2",
        "--train.batch_size", "4",
        "--train.micro_batch_size", "2",
        "--train.max_epochs", "1",
        "--train.num_episodes", "1",
        "--actor.num_gpus_per_node", "1",
        "--ref.num_gpus_per_node", "1",
        "--critic.num_gpus_per_node", "1",
        "--reward.num_gpus_per_node", "1",
        "--vllm.num_engines", "1",
        "--ds.zero_stage", "2",
        # fp32: the check below compares with plain fp32 transformers to 1e-3. In bf16 one sum of
        # ten log-probs already drifted by 0.035 (a CI flake); the demo covers the bf16 path.
        "--ds.param_dtype", "fp32",
        "--ds.attn_implementation", "eager",
        "--actor.adam.lr", "1e-4",
        "--critic.adam.lr", "1e-4",
        "--algo.kl.init_coef", "0.01",
        "--logger.tensorboard_dir", os.path.join(out_dir, "tb"),
        "--ckpt.output_dir", os.path.join(out_dir, "ckpt"),
        "--ckpt.path", os.path.join(out_dir, "ckpt_state"),
        *extra,
    ]  # fmt: skip


def run_srppo(argv, timeout=420):
    env = dict(os.environ, TOKENIZERS_PARALLELISM="false", RAY_DEDUP_LOGS="0")
    proc = subprocess.run(
        [sys.executable, "-m", "openrlhf_coherent.cli.train_ppo_ray", *argv],
        capture_output=True,
        text=True,
        timeout=timeout,
        env=env,
    )
    log = proc.stdout + proc.stderr
    assert proc.returncode == 0, log[-6000:]
    return log


def step_logs(log):
    """The per-step status dicts OpenRLHF prints ("Global step N: {...}")."""
    return [(int(m.group(1)), m.group(2)) for m in re.finditer(r"Global step (\d+): (\{.*\})", log)]


def metric(status: str, key: str) -> float:
    return float(re.search(rf"'{re.escape(key)}': ([-\d.e+]+|nan)", status).group(1))


def check_rewards_match_independent_computation(out_dir, sft, base, n_steps, only_steps=None):
    """Every logged sample's reward (or those of `only_steps`) against plain transformers."""
    rows = [json.loads(line) for line in open(os.path.join(out_dir, "rollouts.jsonl"))]
    assert sorted({r["step"] for r in rows}) == list(range(1, n_steps + 1))
    for row in rows:
        if only_steps is not None and row["step"] not in only_steps:
            continue
        assert row["response_ids"], "empty response"
        expected = plain_coherent_reward(sft, base, row["prompt_ids"], row["response_ids"])
        assert row["reward"] == pytest.approx(expected, abs=2e-3, rel=1e-4), row
    return rows


def free_ports(n):
    """n TCP ports free on 127.0.0.1 right now (for a Ray head's many listeners)."""
    import socket

    socks = [socket.socket() for _ in range(n)]
    for s in socks:
        s.bind(("127.0.0.1", 0))
    ports = [s.getsockname()[1] for s in socks]
    for s in socks:
        s.close()
    return ports


def remove_ray_cluster(temp_dir):
    """Stop a test's own `ray start` cluster and delete its temp dir. Not `ray stop`: that stops
    every Ray on the machine (another test's, a user's), whatever its temp dir. Each process of the
    cluster names the temp dir on its command line; a job's processes work in it."""
    import shutil
    import time

    for signal_name in ("-TERM", "-KILL"):
        pids = cluster_processes(temp_dir)
        for pid in pids:
            subprocess.run(["kill", signal_name, pid], capture_output=True)
        if pids:
            time.sleep(1)
    shutil.rmtree(temp_dir, ignore_errors=True)


def cluster_processes(temp_dir):
    """PIDs of a `ray start` cluster's processes (each names its temp dir on its command line) and
    of its jobs' processes (which work in the job's working_dir, unpacked under that temp dir)."""
    pids = subprocess.run(["pgrep", "-f", temp_dir], capture_output=True, text=True).stdout.split()
    return sorted(set(pids) | set(processes_working_in(temp_dir)), key=int)


def processes_working_in(folder):
    """PIDs of the processes whose working directory is `folder` or below it: a `ray job submit`
    job's entrypoint and its children run in the working_dir Ray unpacked under the cluster's temp
    dir, and name it nowhere on their command lines."""
    folder = os.path.realpath(folder)
    pids = []
    for pid in filter(str.isdigit, os.listdir("/proc")):
        try:
            cwd = os.readlink(f"/proc/{pid}/cwd")
        except OSError:  # gone, or not ours to read
            continue
        if cwd == folder or cwd.startswith(folder + os.sep):
            pids.append(pid)
    return pids


def job_driver_logs(temp_dir, tail=4000):
    """The end of every Ray job driver log under a cluster's temp dir (what `ray job logs` shows),
    for a failure message: read before the cluster's temp dir is deleted."""
    import glob

    parts = []
    paths = glob.glob(os.path.join(temp_dir, "session_*", "logs", "job-driver-*.log"))
    for path in sorted({os.path.realpath(p) for p in paths}):  # session_latest links to the session
        with open(path, errors="replace") as f:
            parts.append(f"--- {os.path.basename(path)} (last {tail} characters)\n{f.read()[-tail:]}")
    return "\n".join(parts) or f"(no job driver log under {temp_dir})"


def command_line(pid):
    """`PID: command line` of a process, for failure messages."""
    try:
        with open(f"/proc/{pid}/cmdline", "rb") as f:
            return f"{pid}: " + f.read().replace(b"\0", b" ").decode(errors="replace")[:300]
    except OSError:
        return f"{pid}: (gone)"


def patched_openrlhf_site(tmp_path):
    """A copy of the installed OpenRLHF with patches/ applied (PYTHONPATH=with_cpu_site(site) runs it)."""
    import shutil

    import openrlhf

    site = tmp_path / "site"
    shutil.copytree(os.path.dirname(openrlhf.__file__), site / "openrlhf")
    patch = os.path.join(os.path.dirname(os.path.dirname(os.path.abspath(__file__))), "patches", "openrlhf-0.11.2-reward-plugins.patch")
    applied = subprocess.run(["patch", "-p1", "-i", patch], cwd=site, capture_output=True, text=True)
    assert applied.returncode == 0, applied.stdout + applied.stderr
    return site
