"""The embedded demo: SRPPO end to end on a laptop CPU (`make demo`).

    python -m demo.run --out demo_out            # the full demo, 3 seeds
    python -m demo.run --out demo_quick --quick  # every stage once, tiny budgets (the tests)

Stages, all through the real stack: pretraining of a tiny Llama on a synthetic prose corpus
(plain torch), stage 1 SFT with OpenRLHF's `openrlhf.cli.train_sft` on 32 demonstrations (and
"SFT extended", 3x the epochs), stage 2 SRPPO through `openrlhf_coherent.cli.train_ppo_ray` on 256
prompts without responses, and, as an upper bound, the same PPO with the task's exact checker as
reward. Every model is evaluated with greedy decoding on the same 128 held-out prompts (64
in-domain, 64 out-of-domain, see demo/world.py). Outputs: a table on the console and in
`<out>/results.md`, `<out>/results.json`, and `<out>/training_curves.png`.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import time
from typing import Dict, List

from demo.evaluate import evaluate
from demo.ppo import PPOConfig, checker_reward_flags, coherent_reward_flags, run_ppo
from demo.pretrain import PretrainConfig, pretrain
from demo.sft import SFTConfig, run_sft
from demo.world import PromptSpec, check, make_world, write_prompts_jsonl

# The recommended SRPPO settings (README, "Reward hacking": chosen from `python -m demo.hacking`).
RECOMMENDED_GUARD = ["--coherent.aggregate", "mean", "--coherent.sft_logp_floor", "0.5"]
SRPPO_LR = 5e-5
METRICS = ("accuracy", "accuracy_in_domain", "accuracy_out_of_domain", "mean_response_tokens", "truncation_rate")


class Timer:
    def __init__(self):
        self.stages: Dict[str, float] = {}
        self.start = time.time()

    def run(self, name, fn, *args, **kwargs):
        print(f"[demo] {name} ...", flush=True)
        t0 = time.time()
        result = fn(*args, **kwargs)
        self.stages[name] = round(time.time() - t0, 1)
        print(f"[demo] {name} done in {self.stages[name]:.0f} s (total {time.time() - self.start:.0f} s)", flush=True)
        return result


def rollout_accuracy(rollout_log: str) -> List[float]:
    """Checker accuracy of each step's sampled rollouts (PPO prompts, temperature 1), from the
    rollout log; the held-out metric is computed on the final models only."""
    by_step: Dict[int, List[bool]] = {}
    with open(rollout_log) as f:
        for line in f:
            row = json.loads(line)
            spec = PromptSpec.from_dict(json.loads(row["label"]))
            ok, _ = check(spec, row["response"].strip(), finished=not row["truncated"])
            by_step.setdefault(row["step"], []).append(ok)
    return [sum(v) / len(v) for _, v in sorted(by_step.items())]


def summarize(evals: List[dict]) -> Dict[str, str]:
    out = {}
    for m in METRICS:
        values = [e[m] for e in evals]
        sd = statistics.stdev(values) if len(values) > 1 else 0.0
        out[m] = f"{statistics.mean(values):.3f} ± {sd:.3f}" if len(values) > 1 else f"{values[0]:.3f}"
    return out


def main(argv=None) -> dict:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--out", default="demo_out")
    parser.add_argument("--quick", action="store_true", help="one seed, tiny budgets: checks every stage runs")
    parser.add_argument("--seeds", type=int, default=3)
    parser.add_argument("--ppo_steps", type=int, default=10)
    args = parser.parse_args(argv)
    seeds = [0] if args.quick else list(range(args.seeds))
    steps = 2 if args.quick else args.ppo_steps
    os.makedirs(args.out, exist_ok=True)
    timer = Timer()

    world = make_world(0)
    base = os.path.join(args.out, "base")
    timer.run(
        "pretrain base", pretrain, base, world=world, seed=0, config=PretrainConfig(steps=60) if args.quick else None
    )
    prompts = write_prompts_jsonl(os.path.join(args.out, "ppo_prompts.jsonl"), world.ppo_prompts)
    evals: Dict[str, List[dict]] = {"base": [timer.run("eval base", evaluate, base, world.eval_in, world.eval_out)]}
    curves: Dict[str, List[dict]] = {}

    def ppo(name, seed, sft, reward_flags, estimator="reinforce_baseline"):
        out = os.path.join(args.out, f"{name}_seed{seed}")
        cfg = PPOConfig(actor_lr=SRPPO_LR, max_samples=16 * steps, estimator=estimator)
        result = timer.run(f"{name} seed {seed}", run_ppo, sft, prompts, out, reward_flags(out), cfg, seed)
        rollout_log = os.path.join(out, "rollouts.jsonl")
        task = rollout_accuracy(rollout_log) if os.path.exists(rollout_log) else None
        for i, status in enumerate(result.steps):
            status["task_accuracy"] = task[i] if task else status.get("checker_accuracy")
        curves[f"{name}_seed{seed}"] = result.steps
        evals.setdefault(name, []).append(
            timer.run(f"eval {name} seed {seed}", evaluate, result.model_path, world.eval_in, world.eval_out)
        )
        return out

    for seed in seeds:
        sft = os.path.join(args.out, f"sft_seed{seed}")
        timer.run(f"SFT seed {seed}", run_sft, base, world.demos, sft, SFTConfig(epochs=2, seed=seed))
        evals.setdefault("SFT", []).append(
            timer.run(f"eval SFT seed {seed}", evaluate, sft, world.eval_in, world.eval_out)
        )
        ext = os.path.join(args.out, f"sft_extended_seed{seed}")
        timer.run(f"SFT extended seed {seed}", run_sft, base, world.demos, ext, SFTConfig(epochs=6, seed=seed))
        evals.setdefault("SFT extended", []).append(
            timer.run(f"eval SFT extended seed {seed}", evaluate, ext, world.eval_in, world.eval_out)
        )
        ppo("SRPPO", seed, sft, lambda out: coherent_reward_flags(base, out, RECOMMENDED_GUARD))
        ppo("PPO with checker reward", seed, sft, lambda out: checker_reward_flags())
        if seed == 0 and not args.quick:  # once each: the paper-faithful reward and the token-wise variant
            ppo("SRPPO unguarded (paper-faithful)", seed, sft, lambda out: coherent_reward_flags(base, out))
            token_wise = ["--coherent.reward_type", "token", *RECOMMENDED_GUARD]
            # per-token rewards have no per-prompt scalar baseline: plain REINFORCE (whitened returns)
            ppo(
                "SRPPO token-wise (eq. 8)",
                seed,
                sft,
                lambda out: coherent_reward_flags(base, out, token_wise),
                "reinforce",
            )

    results = {
        "seeds": seeds,
        "ppo_steps": steps,
        "srppo_flags": RECOMMENDED_GUARD,
        "srppo_actor_lr": SRPPO_LR,
        "summary": {name: summarize(e) for name, e in evals.items()},
        "per_seed": evals,
        "curves": curves,
        "stage_seconds": timer.stages,
        "total_seconds": round(time.time() - timer.start, 1),
    }
    table = format_table(results)
    print(table)
    with open(os.path.join(args.out, "results.md"), "w") as f:
        f.write(table)
    with open(os.path.join(args.out, "results.json"), "w") as f:
        json.dump(results, f, indent=1)
    plot_curves(curves, os.path.join(args.out, "training_curves.png"))
    print(f"[demo] wrote {args.out}/results.md, results.json, training_curves.png in {results['total_seconds']:.0f} s")
    return results


def format_table(results) -> str:
    n = len(results["seeds"])
    lines = [
        f"Held-out accuracy (exact checker, greedy decoding, 64 in-domain + 64 out-of-domain prompts); "
        f"mean ± std over {n} seed(s) where a stage was run per seed. PPO: {results['ppo_steps']} steps of "
        f"16 prompts x 4 samples, actor lr {results['srppo_actor_lr']}, SRPPO flags {' '.join(results['srppo_flags'])}.",
        "",
        "| model | runs | accuracy | in-domain | out-of-domain | response tokens | truncation |",
        "|---|---|---|---|---|---|---|",
    ]
    for name, s in results["summary"].items():
        runs = len(results["per_seed"][name])
        lines.append(
            f"| {name} | {runs} | {s['accuracy']} | {s['accuracy_in_domain']} | {s['accuracy_out_of_domain']} | "
            f"{s['mean_response_tokens']} | {s['truncation_rate']} |"
        )
    lines += ["", "Stage times (s): " + ", ".join(f"{k} {v:.0f}" for k, v in results["stage_seconds"].items())]
    lines.append(f"Total: {results['total_seconds']:.0f} s")
    return "\n".join(lines) + "\n"


def plot_curves(curves, path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    panels = [
        ("coherent/reward_mean", "coherent reward (mean)"),
        ("coherent/response_length_mean", "response length (tokens)"),
        ("kl", "KL to the reference (SFT)"),
        ("coherent/eos_rate", "EOS rate"),
        ("task_accuracy", "checker accuracy of rollouts\n(PPO prompts, sampled)"),
    ]
    fig, axes = plt.subplots(1, len(panels), figsize=(4.2 * len(panels), 3.4))
    for ax, (key, title) in zip(axes, panels):
        for i, (name, steps) in enumerate(curves.items()):
            points = [(s["step"], s[key]) for s in steps if s.get(key) is not None]
            if points:  # one colour per run across panels (not every run has every metric)
                ax.plot(*zip(*points), label=name, marker=".", color=f"C{i % 10}")
        ax.set_title(title)
        ax.set_xlabel("PPO step")
    axes[-1].legend(fontsize=6, loc="upper left", bbox_to_anchor=(1.02, 1.0))  # the only panel with every run
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


if __name__ == "__main__":
    main()
