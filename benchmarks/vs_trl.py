"""SRPPO through OpenRLHF (this package, CPU dev mode) against TRL's GRPOTrainer with a
coherent-reward callable: seconds per 100 samples after warm-up, and peak memory.

    make bench-venv                        # TRL is installed only by the benchmark extra
    python -m benchmarks.vs_trl            # default: about 3 min on 2 CPU cores
    python -m benchmarks.vs_trl --quick    # smoke run

Matched on both sides: the same random Llama models (the SFT model is the policy, the base model
the other reward term), the same prompts (raw text, no chat template), prompts per step, samples
per prompt (the group), steps, at most the same new tokens, temperature 1, learning rate, one
optimizer step per rollout on the whole rollout in one micro-batch, no KL term (TRL's default
beta 0: neither side loads a reference model), group-normalised advantages. The reward is
log p_SFT(y|x) - log p_base(y|x) summed over the response: ours from the coherent actor (which
then runs both models, there being no reference forward to reuse), TRL's from a callable that
runs both models through `openrlhf_coherent.scoring` in the trainer's process.

Time: ours from OpenRLHF's per-step `timing/step_total`; TRL's from a callback's timestamps at
each optimizer step's end (each step = generate + reward + loss + update). The sides run in
alternating rounds (`--rounds`: ours, TRL, then TRL, ours, ...), each round a fresh process, and
every round's first `--warmup` steps are dropped; the ratio compares the medians of the pooled
steps. Start-up (process, Ray, model loading) is reported separately as wall time.

Memory: each side runs in its own subprocess; a thread samples every second the process and all
its descendants (for ours: Ray's GCS, raylet and every worker, which the driver's local
`ray.init` starts as its descendants) and keeps the peak of the sum of PSS (shared pages split
between the processes that map them; RSS would count Ray's shared object store and libraries
once per process) and of the sum of RSS.

Known structural differences (reported, not hidden): OpenRLHF runs each role in its own Ray
process with DeepSpeed (actor, coherent actor, rollout engine) and computes the rollout's
log-probs under the policy in a separate forward (TRL, with one iteration per rollout, reuses the
training forward's); the CPU rollout engine batches the rollout's requests like TRL's `generate`.
"""

from __future__ import annotations

import argparse
import json
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


def trl_available() -> bool:
    import importlib.util

    return importlib.util.find_spec("trl") is not None


# ---- ours: OpenRLHF through this package's entry point --------------------------------------------


def ours_argv(cfg: Dict, models: Dict[str, str], prompts: str, out_dir: str) -> List[str]:
    batch = cfg["prompts_per_step"] * cfg["group"]
    return [
        "--actor.model_name_or_path", models["sft"],
        "--reward.model_name_or_path", "coherent", "--coherent.base_model", models["base"],
        "--data.prompt_dataset", prompts, "--data.input_key", "input",
        "--data.max_samples", str(cfg["steps"] * cfg["prompts_per_step"]),
        "--data.max_len", str(cfg["prompt_words"] + cfg["max_new_tokens"] + 8),
        "--rollout.max_new_tokens", str(cfg["max_new_tokens"]), "--rollout.temperature", "1.0",
        "--rollout.batch_size", str(cfg["prompts_per_step"]), "--rollout.n_samples_per_prompt", str(cfg["group"]),
        "--rollout.micro_batch_size", str(batch), "--train.batch_size", str(batch), "--train.micro_batch_size", str(batch),
        "--train.max_epochs", "1", "--train.num_episodes", "1", "--train.seed", str(cfg["seed"]),
        "--algo.advantage.estimator", "group_norm", "--algo.kl.init_coef", "0",
        "--actor.adam.lr", str(cfg["lr"]), "--actor.lr_warmup_ratio", "0",
        "--actor.num_gpus_per_node", "1", "--reward.num_gpus_per_node", "1", "--vllm.num_engines", "1",
        "--ds.zero_stage", "0", "--ds.param_dtype", "fp32", "--ds.attn_implementation", "eager",
        "--ckpt.output_dir", os.path.join(out_dir, "model"), "--ckpt.path", os.path.join(out_dir, "ckpt"),
    ]  # fmt: skip


# generation: the CPU rollout engine; make_experience: the policy's log-probs and the coherent
# actor's forwards (both terms here: no reference model to reuse), Ray transfers; ppo_train: the
# policy's forward, backward and optimizer step; broadcast: the weights to the rollout engine.
PHASES = ("generation", "make_experience", "ppo_train", "broadcast")


def run_ours(cfg, models, prompts, out_dir) -> Dict:
    os.makedirs(out_dir, exist_ok=True)
    cmd = [sys.executable, "-m", "openrlhf_coherent.cli.train_ppo_ray", *ours_argv(cfg, models, prompts, out_dir)]
    log, wall, memory = run_measured(cmd, os.path.join(out_dir, "train.log"), cfg["timeout"])
    steps = parse_steps(log)
    if len(steps) != cfg["steps"]:
        raise RuntimeError(f"ours: expected {cfg['steps']} steps, parsed {len(steps)} (log in {out_dir})")
    return {
        "wall_s": wall,
        "memory": memory,
        "step_seconds": [s["timing/step_total"] for s in steps],
        "generation_seconds": [s["timing/generation"] for s in steps],
        # OpenRLHF's own per-phase timers: where a step's time goes (step_total is their sum).
        "phase_seconds": {
            phase: [s.get(f"timing/{phase}", 0.0) for s in steps] for phase in PHASES
        },
        "response_length": [s.get("response_length") for s in steps],
    }


# ---- TRL: GRPOTrainer in a subprocess (this module with --trl_worker) ------------------------------


def run_trl(cfg, models, prompts, out_dir) -> Dict:
    os.makedirs(out_dir, exist_ok=True)
    cfg_path = os.path.join(out_dir, "config.json")
    with open(cfg_path, "w") as f:
        json.dump({**cfg, "models": models, "prompts": prompts, "out_dir": out_dir}, f)
    cmd = [sys.executable, "-m", "benchmarks.vs_trl", "--trl_worker", cfg_path]
    log, wall, memory = run_measured(cmd, os.path.join(out_dir, "train.log"), cfg["timeout"])
    with open(os.path.join(out_dir, "steps.json")) as f:
        worker = json.load(f)
    return {"wall_s": wall, "memory": memory, **worker}


def trl_worker(cfg_path: str) -> None:
    """Runs inside the TRL subprocess: GRPOTrainer on the same models and prompts."""
    import torch
    from datasets import Dataset
    from transformers import AutoModelForCausalLM, AutoTokenizer, TrainerCallback
    from trl import GRPOConfig, GRPOTrainer

    from openrlhf_coherent.scoring import response_log_probs

    with open(cfg_path) as f:
        cfg = json.load(f)
    models, out_dir = cfg["models"], cfg["out_dir"]
    tokenizer = AutoTokenizer.from_pretrained(models["sft"])
    scorers = {
        name: AutoModelForCausalLM.from_pretrained(models[name], dtype=torch.float32).eval() for name in ("sft", "base")
    }

    def coherent_reward(prompts, completions, completion_ids, **kwargs):
        # TRL tokenizes prompts with processing_class(text=prompts); the same here.
        prompt_ids = tokenizer(text=prompts)["input_ids"]
        pairs = list(zip(prompt_ids, completion_ids))
        nonempty = [i for i, (_, c) in enumerate(pairs) if len(c) > 0]
        terms = {
            name: response_log_probs(m, [pairs[i] for i in nonempty], pad_token_id=tokenizer.pad_token_id)
            for name, m in scorers.items()
        }
        rewards = [0.0] * len(pairs)
        for k, i in enumerate(nonempty):
            rewards[i] = (terms["sft"][k].sum() - terms["base"][k].sum()).item()
        return rewards

    class StepTimer(TrainerCallback):
        def __init__(self):
            self.times = [time.perf_counter()]

        def on_step_end(self, args, state, control, **kwargs):
            self.times.append(time.perf_counter())

    with open(cfg["prompts"]) as f:
        dataset = Dataset.from_list([{"prompt": json.loads(line)["input"]} for line in f])
    batch = cfg["prompts_per_step"] * cfg["group"]
    config = GRPOConfig(
        output_dir=os.path.join(out_dir, "trl"), use_cpu=True, bf16=False, report_to="none", save_strategy="no",
        logging_steps=1, seed=cfg["seed"], max_steps=cfg["steps"], learning_rate=cfg["lr"],
        lr_scheduler_type="constant", warmup_steps=0,
        per_device_train_batch_size=batch, gradient_accumulation_steps=1, steps_per_generation=1,
        num_generations=cfg["group"], num_iterations=1, max_completion_length=cfg["max_new_tokens"],
        temperature=1.0, top_p=1.0, top_k=0, beta=0.0, scale_rewards="group", dataloader_num_workers=0,
    )  # fmt: skip
    timer = StepTimer()
    trainer = GRPOTrainer(
        model=models["sft"], reward_funcs=coherent_reward, args=config, train_dataset=dataset,
        processing_class=tokenizer, callbacks=[timer],
    )  # fmt: skip
    timer.times = [time.perf_counter()]  # the clock starts at train(), after model loading
    trainer.train()
    lengths = [h["completions/mean_length"] for h in trainer.state.log_history if "completions/mean_length" in h]
    with open(os.path.join(out_dir, "steps.json"), "w") as f:
        json.dump({"step_seconds": [b - a for a, b in zip(timer.times, timer.times[1:])], "response_length": lengths}, f)


# ---- measurement ---------------------------------------------------------------------------------


def run_measured(cmd: List[str], log_path: str, timeout: int):
    env = dict(os.environ, TOKENIZERS_PARALLELISM="false", PYTHONUNBUFFERED="1")
    env.pop("RAY_ADDRESS", None)
    env.setdefault("RAY_health_check_failure_threshold", "40")  # see reward_overhead.py
    env.setdefault("RAY_health_check_timeout_ms", "30000")
    start = time.time()
    with open(log_path, "w") as log_file:
        proc = subprocess.Popen(cmd, stdout=log_file, stderr=subprocess.STDOUT, env=env)
        with TreeMemorySampler(proc.pid, interval=1.0) as memory:
            proc.wait(timeout=timeout)
    log = open(log_path).read()
    if proc.returncode != 0:
        raise RuntimeError(f"{cmd[2]} failed (exit {proc.returncode}), see {log_path}:\n{log[-3000:]}")
    return log, round(time.time() - start, 1), memory.result()


def summarize(rounds: List[Dict], samples_per_step: int, warmup: int) -> Dict:
    """One side's measured steps pooled over its rounds (each round's first `warmup` steps dropped)."""

    def per_100(values):
        return spread([v / samples_per_step * 100 for v in values])

    def measured(values_of):
        return [v for run in rounds for v in values_of(run)[warmup:]]

    steps = measured(lambda run: run["step_seconds"])
    out = {
        "seconds_per_100_samples": per_100(steps),
        "step_seconds": spread(steps),
        "peak_pss_gib": max(run["memory"]["peak_pss_gib"] for run in rounds),
        "peak_rss_sum_gib": max(run["memory"]["peak_rss_sum_gib"] for run in rounds),
        "processes": max(run["memory"]["peak_processes"] for run in rounds),
        "wall_s": [run["wall_s"] for run in rounds],
    }
    if "generation_seconds" in rounds[0]:  # ours: OpenRLHF times generation separately (the CPU engine's share)
        out["seconds_per_100_samples_excluding_generation"] = per_100(
            [t - g for t, g in zip(steps, measured(lambda run: run["generation_seconds"]))]
        )
        out["phase_seconds_per_100_samples"] = {
            phase: per_100(measured(lambda run: run["phase_seconds"][phase])) for phase in PHASES
        }
    return out


def main(argv=None) -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--trl_worker", default=None, help=argparse.SUPPRESS)
    p.add_argument("--quick", action="store_true", help="smoke run: smaller model, 2 steps")
    p.add_argument("--hidden", type=int, default=256)
    p.add_argument("--layers", type=int, default=2)
    p.add_argument("--steps", type=int, default=8)
    p.add_argument("--warmup", type=int, default=1, help="steps dropped at the start of every round")
    p.add_argument("--rounds", type=int, default=2, help="runs per side, the sides alternating (--quick: 1)")
    p.add_argument("--prompts_per_step", type=int, default=8)
    p.add_argument("--group", type=int, default=4, help="samples per prompt")
    p.add_argument("--prompt_words", type=int, default=32)
    p.add_argument("--max_new_tokens", type=int, default=32)
    p.add_argument("--lr", type=float, default=1e-6)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--timeout", type=int, default=900)
    p.add_argument("--workdir", default=None)
    p.add_argument("--out", default=None)
    args = p.parse_args(argv)
    if args.trl_worker:
        return trl_worker(args.trl_worker)
    if args.quick:
        args.hidden, args.layers, args.steps, args.prompts_per_step, args.group, args.rounds = 128, 2, 2, 4, 2, 1
        args.prompt_words, args.max_new_tokens = 16, 8
    if args.steps <= args.warmup:
        p.error("--steps must exceed --warmup")
    if args.rounds < 1:
        p.error("--rounds must be at least 1")
    if not trl_available():
        sys.exit("vs_trl needs TRL: `make bench-venv` (pip install -r requirements/bench.txt)")

    import trl

    load_start = loadavg()
    workdir = args.workdir or tempfile.mkdtemp(prefix="bench_vs_trl_")
    models = make_bench_models(
        os.path.join(workdir, "models"), args.hidden, args.layers, intermediate=args.hidden * 8 // 3, heads=max(args.hidden // 64, 2)
    )
    prompts = write_prompts(os.path.join(workdir, "prompts.jsonl"), args.steps * args.prompts_per_step, args.prompt_words)
    cfg = {k: v for k, v in vars(args).items() if k not in ("out", "workdir", "trl_worker", "quick")}
    samples_per_step = args.prompts_per_step * args.group

    # The sides alternate, and swap which goes first every round (ours, TRL, TRL, ours, ...): this
    # machine's speed drifts by about 20% within minutes, and a ratio of two runs made minutes
    # apart measured that drift as much as the code.
    runs: Dict[str, List[Dict]] = {"openrlhf_coherent": [], "trl": []}
    sides = [("openrlhf_coherent", run_ours), ("trl", run_trl)]
    for round_index in range(args.rounds):
        for name, runner in sides if round_index % 2 == 0 else sides[::-1]:
            print(f"round {round_index + 1}/{args.rounds}: running {name} ...", flush=True)
            runs[name].append(runner(cfg, models, prompts, os.path.join(workdir, f"{name}_round{round_index}")))
            print(f"    {runs[name][-1]['wall_s']} s", flush=True)
    summary = {name: summarize(rounds, samples_per_step, args.warmup) for name, rounds in runs.items()}

    record = {
        "benchmark": "vs_trl",
        "command": " ".join(["python -m benchmarks.vs_trl", *(sys.argv[1:] if argv is None else argv)]),
        "argv": sys.argv[1:] if argv is None else list(argv),
        "config": cfg | {"quick": args.quick, "samples_per_step": samples_per_step},
        "versions": {"trl": trl.__version__, "openrlhf": _version("openrlhf")},
        "model_params": param_count(models["base"]),
        "machine": machine(),
        "loadavg_start": load_start,
        "loadavg_end": loadavg(),
        "summary": summary,
        "runs": runs,
    }
    ratio = summary["openrlhf_coherent"]["seconds_per_100_samples"]["median"] / summary["trl"]["seconds_per_100_samples"]["median"]
    record["ratio_ours_to_trl"] = round(ratio, 3)  # medians, seconds per sample; the target is <= 1.5
    path = write_result("vs_trl_quick" if args.quick else "vs_trl", record, args.out)

    print()
    print(f"OpenRLHF SRPPO vs TRL GRPO: {machine_line(record['machine'])}; load avg {load_start} -> {record['loadavg_end']}")
    print(
        f"Llama {args.hidden}x{args.layers} ({record['model_params']['total'] / 1e6:.2f}M params); {args.prompts_per_step} prompts "
        f"x {args.group} samples per step, {args.rounds} alternating rounds of {args.steps} steps "
        f"({args.rounds * (args.steps - args.warmup)} measured per side), "
        f"{args.prompt_words}-token prompts, <= {args.max_new_tokens} new tokens; TRL {trl.__version__}"
    )
    labels = {"openrlhf_coherent": "OpenRLHF + coherent actor (group_norm)", "trl": "TRL GRPOTrainer + coherent callable"}
    rows = [
        [labels[name], fmt_spread(s["seconds_per_100_samples"], 1), f"{s['peak_pss_gib']:.2f}", f"{s['peak_rss_sum_gib']:.2f}",
         s["processes"], ", ".join(str(w) for w in s["wall_s"])]
        for name, s in summary.items()
    ]  # fmt: skip
    print(table(["run", "s / 100 samples", "peak PSS GiB", "peak RSS sum GiB", "processes", "wall s per round (incl. start-up)"], rows))
    print("s / 100 samples: median [min, max] over the measured steps of every round; memory: whole process tree, sampled every 1 s.")
    print(f"ratio ours / TRL (median seconds per sample): {record['ratio_ours_to_trl']:.2f}")
    phases = summary["openrlhf_coherent"]["phase_seconds_per_100_samples"]
    print("ours by phase (OpenRLHF's timing/*), s / 100 samples: "
          + "; ".join(f"{phase} {fmt_spread(phases[phase], 2)}" for phase in PHASES))
    print(f"wrote {path}")


def _version(name: str) -> str:
    from importlib.metadata import version

    return version(name)


if __name__ == "__main__":
    main()
