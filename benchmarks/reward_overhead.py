"""What the coherent reward costs inside PPO, against a classic reward model of the same size.

    python -m benchmarks.reward_overhead            # default: about 4 min on 2 CPU cores
    python -m benchmarks.reward_overhead --quick    # smoke run, smaller models, 2 steps

Three real OpenRLHF PPO runs (CPU dev mode, `openrlhf_coherent.cli.train_ppo_ray`, GAE with a
critic and a reference model) on the same random Llama models, prompts, seed and lengths:

  (a) classic PPO: `--reward.model_name_or_path BASE`, a reward-model actor of the base model's size
  (b) SRPPO: `--reward.model_name_or_path coherent`, log p_SFT reused from the reference forward
  (c) SRPPO with `--coherent.reuse_ref never`: the coherent actor runs the SFT and base models

Per step, OpenRLHF's own timers (`timing/make_experience`, `timing/ppo_train`,
`timing/broadcast`, `timing/generation`, `timing/step_total` in its "Global step N" status) are
read from the log; the first `--warmup` steps of each run are dropped. The ratios b/a and c/a
pair step i of one variant with step i of (a) (same prompts: same seed and data order). The
variants run one after another, round-robin over `--repeats` rounds, so load from other jobs
on the machine hits all three alike.
"""

from __future__ import annotations

import argparse
import os
import subprocess
import sys
import tempfile
import time
from typing import Dict, List

from benchmarks.common import (
    TreeMemorySampler,
    fmt_spread,
    loadavg,
    machine,
    machine_line,
    make_bench_models,
    param_count,
    spread,
    table,
    write_prompts,
    write_result,
)
from demo.ppo import parse_steps

VARIANTS = {
    "a": "classic PPO, reward model",
    "b": "SRPPO, reference log-probs reused",
    "c": "SRPPO, both terms in coherent actor",
}
TIMERS = ["make_experience", "ppo_train", "broadcast", "generation", "step_total"]


def variant_flags(variant: str, base: str) -> List[str]:
    if variant == "a":
        return ["--reward.model_name_or_path", base]
    flags = ["--reward.model_name_or_path", "coherent", "--coherent.base_model", base]
    return flags + (["--coherent.reuse_ref", "never"] if variant == "c" else [])


def ppo_argv(args, models: Dict[str, str], prompts: str, out_dir: str, variant: str) -> List[str]:
    return [
        "--actor.model_name_or_path", models["sft"], "--critic.model_name_or_path", models["sft"],
        *variant_flags(variant, models["base"]),
        "--data.prompt_dataset", prompts, "--data.input_key", "input",
        "--data.max_samples", str(args.steps * args.prompts_per_step),
        "--data.max_len", str(args.prompt_words + args.max_new_tokens + 8),
        "--rollout.max_new_tokens", str(args.max_new_tokens), "--rollout.temperature", "1.0",
        "--rollout.batch_size", str(args.prompts_per_step), "--rollout.n_samples_per_prompt", "1",
        "--rollout.micro_batch_size", str(args.micro_batch_size),
        "--train.batch_size", str(args.prompts_per_step), "--train.micro_batch_size", str(args.micro_batch_size),
        "--train.max_epochs", "1", "--train.num_episodes", "1", "--train.seed", "0",
        "--algo.advantage.estimator", "gae", "--algo.kl.init_coef", "0.01",
        # A tiny learning rate keeps the policy (and so the response lengths) nearly the same in all
        # three runs: the variants then do the same work per step and differ only in the reward path.
        "--actor.adam.lr", "1e-7", "--critic.adam.lr", "1e-7", "--actor.lr_warmup_ratio", "0",
        "--actor.num_gpus_per_node", "1", "--ref.num_gpus_per_node", "1",
        "--critic.num_gpus_per_node", "1", "--reward.num_gpus_per_node", "1", "--vllm.num_engines", "1",
        "--ds.zero_stage", "0", "--ds.param_dtype", "fp32", "--ds.attn_implementation", "eager",
        "--ckpt.output_dir", os.path.join(out_dir, "model"), "--ckpt.path", os.path.join(out_dir, "ckpt"),
    ]  # fmt: skip


def run_variant(args, models, prompts, out_dir, variant) -> Dict:
    os.makedirs(out_dir, exist_ok=True)
    log_path = os.path.join(out_dir, "train.log")
    env = dict(os.environ, TOKENIZERS_PARALLELISM="false", PYTHONUNBUFFERED="1")
    env.pop("RAY_ADDRESS", None)  # always a fresh local Ray cluster
    # On a loaded machine the GCS can miss the raylet's health checks and declare the node dead
    # mid-run; a benchmark would rather wait than die (Ray's default gives up after ~15 s).
    env.setdefault("RAY_health_check_failure_threshold", "40")
    env.setdefault("RAY_health_check_timeout_ms", "30000")
    cmd = [sys.executable, "-m", "openrlhf_coherent.cli.train_ppo_ray", *ppo_argv(args, models, prompts, out_dir, variant)]
    start = time.time()
    with open(log_path, "w") as log_file:
        proc = subprocess.Popen(cmd, stdout=log_file, stderr=subprocess.STDOUT, env=env)
        with TreeMemorySampler(proc.pid, interval=2.0) as memory:
            proc.wait(timeout=args.timeout)
    log = open(log_path).read()
    if proc.returncode != 0:
        raise RuntimeError(f"variant {variant} failed (exit {proc.returncode}), see {log_path}:\n{log[-3000:]}")
    steps = parse_steps(log)
    if len(steps) != args.steps:
        raise RuntimeError(f"variant {variant}: expected {args.steps} steps, parsed {len(steps)} from {log_path}")
    keep = ["step"] + [f"timing/{t}" for t in TIMERS] + [
        "response_length", "coherent/sft_forwards", "coherent/base_forwards", "coherent/sft_logprobs_reused",
    ]
    return {
        "wall_s": round(time.time() - start, 1),
        "memory": memory.result(),
        "steps": [{k: s[k] for k in keep if k in s} for s in steps],
    }


def ratios(runs: Dict[str, List[Dict]], variant: str, timer: str, warmup: int) -> List[float]:
    """Step i of `variant` over step i of (a), in the same round, for every measured step."""
    out = []
    for run_v, run_a in zip(runs[variant], runs["a"]):
        for sv, sa in zip(run_v["steps"][warmup:], run_a["steps"][warmup:]):
            out.append(sv[f"timing/{timer}"] / sa[f"timing/{timer}"])
    return out


def main(argv=None) -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--quick", action="store_true", help="smoke run: small models, 2 steps, 1 round")
    p.add_argument("--hidden", type=int, default=384)
    p.add_argument("--layers", type=int, default=4)
    p.add_argument("--steps", type=int, default=5, help="PPO steps per run (the first --warmup are dropped)")
    p.add_argument("--warmup", type=int, default=1)
    p.add_argument("--repeats", type=int, default=1, help="rounds of (a, b, c)")
    p.add_argument("--prompts_per_step", type=int, default=16)
    p.add_argument("--micro_batch_size", type=int, default=8)
    p.add_argument("--prompt_words", type=int, default=64)
    p.add_argument("--max_new_tokens", type=int, default=32)
    p.add_argument("--timeout", type=int, default=900)
    p.add_argument("--workdir", default=None, help="models, prompts and run logs (default: a temp dir)")
    p.add_argument("--out", default=None, help="JSON path (default benchmarks/results/reward_overhead[_quick].json)")
    args = p.parse_args(argv)
    if args.quick:
        args.hidden, args.layers, args.steps, args.repeats = 128, 2, 2, 1
        args.prompts_per_step, args.prompt_words, args.max_new_tokens = 8, 16, 8
    if args.steps <= args.warmup:
        p.error("--steps must exceed --warmup")

    load_start = loadavg()
    workdir = args.workdir or tempfile.mkdtemp(prefix="bench_reward_overhead_")
    models = make_bench_models(
        os.path.join(workdir, "models"), args.hidden, args.layers, intermediate=args.hidden * 8 // 3, heads=args.hidden // 64 or 2
    )
    prompts = write_prompts(os.path.join(workdir, "prompts.jsonl"), args.steps * args.prompts_per_step, args.prompt_words)

    runs: Dict[str, List[Dict]] = {v: [] for v in VARIANTS}
    for round_ in range(args.repeats):
        for variant in VARIANTS:
            print(f"[round {round_ + 1}/{args.repeats}] variant ({variant}) {VARIANTS[variant]} ...", flush=True)
            runs[variant].append(run_variant(args, models, prompts, os.path.join(workdir, f"r{round_}_{variant}"), variant))
            print(f"    {runs[variant][-1]['wall_s']} s", flush=True)

    summary = {}
    for variant in VARIANTS:
        measured = [s for run in runs[variant] for s in run["steps"][args.warmup :]]
        summary[variant] = {t: spread([s[f"timing/{t}"] for s in measured]) for t in TIMERS}
        summary[variant]["response_length"] = spread([s["response_length"] for s in measured if "response_length" in s])
        summary[variant]["peak_pss_gib"] = max(run["memory"]["peak_pss_gib"] for run in runs[variant])
        if variant != "a":
            summary[variant]["ratio_to_a"] = {t: spread(ratios(runs, variant, t, args.warmup)) for t in TIMERS}

    record = {
        "benchmark": "reward_overhead",
        "command": " ".join(["python -m benchmarks.reward_overhead", *(sys.argv[1:] if argv is None else argv)]),
        "argv": sys.argv[1:] if argv is None else list(argv),
        "config": {k: v for k, v in vars(args).items() if k not in ("out", "workdir")},
        "model_params": param_count(models["base"]),
        "machine": machine(),
        "loadavg_start": load_start,
        "loadavg_end": loadavg(),
        "variants": VARIANTS,
        "summary": summary,
        "runs": runs,
        "target": "b/a <= 1.05 for experience making (median of per-step ratios)",
        "target_met": summary["b"]["ratio_to_a"]["make_experience"]["median"] <= 1.05,
    }
    path = write_result("reward_overhead_quick" if args.quick else "reward_overhead", record, args.out)

    print()
    print(f"Reward overhead inside PPO: {machine_line(record['machine'])}; load avg {load_start} -> {record['loadavg_end']}")
    print(
        f"Llama {args.hidden}x{args.layers} ({record['model_params']['total'] / 1e6:.1f}M params) for actor, critic, "
        f"reference, reward/base and SFT; {args.prompts_per_step} prompts x {args.prompt_words} tokens, "
        f"<= {args.max_new_tokens} new tokens; {args.steps - args.warmup} measured steps x {args.repeats} round(s)"
    )
    rows = []
    for variant, name in VARIANTS.items():
        s = summary[variant]
        r = s.get("ratio_to_a")
        rows.append([
            f"({variant}) {name}",
            fmt_spread(s["make_experience"]), fmt_spread(s["step_total"]),
            fmt_spread(r["make_experience"]) if r else "1", fmt_spread(r["step_total"]) if r else "1",
            f"{s['response_length'].get('median', float('nan')):.1f}", f"{s['peak_pss_gib']:.2f}",
        ])  # fmt: skip
    header = ["variant", "make_experience s", "whole step s", "x (a) make_experience", "x (a) step", "resp. len", "peak PSS GiB"]
    print(table(header, rows))
    print("median [min, max] over measured steps; ratios pair step i with step i of (a).")
    print(f"target b/a <= 1.05 (experience making): {'met' if record['target_met'] else 'MISSED'}")
    print(f"wrote {path}")


if __name__ == "__main__":
    main()
