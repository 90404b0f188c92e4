"""The embedded demo: SRPPO end to end on a laptop CPU (`make demo`).

    python -m demo.run --out demo_out            # the full demo, 3 seeds
    python -m demo.run --out demo_quick --quick  # every stage once, tiny budgets (the tests)

Stages, all through the real stack: pretraining of a tiny Llama on a synthetic prose corpus
(plain torch), stage 1 SFT with OpenRLHF's `openrlhf.cli.train_sft` on 32 demonstrations (and
"SFT extended", 3x the epochs), the reward-ranking check (`demo.reward_check`, before any PPO),
stage 2 SRPPO through `openrlhf_coherent.cli.train_ppo_ray` on 256 prompts without responses, and,
as the upper bound ("oracle"), the same PPO command with the task's exact checker as its reward:
same SFT model, prompts, seed, steps, learning rate, KL coefficient and estimator; only the reward
differs. The PPO runs save a Hugging Face checkpoint every `eval_every` steps; after each run every
checkpoint is evaluated with greedy decoding on the same 128 held-out prompts (64 in-domain, 64
out-of-domain, see demo/world.py), which gives the held-out curves. Outputs: a table on the console
and in `<out>/results.md`, `<out>/results.json`, and `<out>/training_curves.png`.
"""

from __future__ import annotations

import argparse
import glob
import json
import os
import re
import statistics
import time
from dataclasses import asdict, dataclass, replace
from typing import Dict, List, Optional

from demo.evaluate import evaluate
from demo.ppo import PPOConfig, checker_reward_flags, coherent_reward_flags, run_ppo
from demo.pretrain import PretrainConfig, pretrain
from demo.sft import SFTConfig, run_sft
from demo.world import PromptSpec, check, make_world, write_prompts_jsonl

# The recommended SRPPO guard (README, "Reward hacking": chosen from `python -m demo.hacking`).
RECOMMENDED_GUARD = ["--coherent.aggregate", "mean", "--coherent.sft_logp_floor", "0.5"]
METRICS = ("accuracy", "accuracy_in_domain", "accuracy_out_of_domain", "mean_response_tokens", "truncation_rate")
ORACLE = "PPO with checker reward"
DOMAINS = (("all", "accuracy"), ("in", "accuracy_in_domain"), ("out", "accuracy_out_of_domain"))


@dataclass
class DemoSettings:
    """The PPO budget shared by SRPPO and the oracle (and every other PPO run of the demo).

    How the default was chosen (docs/demo.md, "The budget"), before any SRPPO held-out number at
    this budget: the KL coefficient (0.05) and the estimator are the reward-hacking ablation's; the
    number of steps fits the demo's 10-minute budget (one pass over the 256 PPO prompts; on 2 cores
    a PPO run costs ~40 s of start-up, checkpoint saving and shutdown, plus 0.3-0.7 s a step), and
    the learning rate is the smallest tried that lets the *oracle* (exact checker reward) clear
    +0.15 out of domain over SFT, mean of 3 seeds, without an in-domain loss, in every run
    (`demo.oracle_budget`, 16 steps, two runs: lr 3e-4 +0.135 and +0.167, lr 4e-4 +0.172 and
    +0.182), as the issue asks; 2 SFT epochs and minimum overlap are the paper's main setting. The
    SRPPO guard is `RECOMMENDED_GUARD`. No setting was tuned on SRPPO's held-out accuracy."""

    ppo_steps: int = 16  # one pass over the 256 PPO prompts
    eval_every: int = 4
    actor_lr: float = 4e-4
    kl_coef: float = 0.05
    rollout_prompts: int = 16
    samples_per_prompt: int = 4
    sft_epochs: int = 2
    sft_extended_epochs: int = 6

    def ppo_config(self, estimator: str = "reinforce_baseline", extra=(), n_prompts: int = 256) -> PPOConfig:
        """`ppo_steps` rollouts: within one pass over the `n_prompts` PPO prompts, or whole passes
        (episodes) over them."""
        per_episode = n_prompts // self.rollout_prompts
        if self.ppo_steps < 1:
            raise ValueError("at least 1")
        if self.ppo_steps <= per_episode:
            max_samples, episodes = self.rollout_prompts * self.ppo_steps, 1
        else:
            if self.ppo_steps % per_episode:
                raise ValueError(f"more steps than one pass over the prompts ({per_episode}) must be whole passes")
            max_samples, episodes = n_prompts, self.ppo_steps // per_episode
        return PPOConfig(
            rollout_batch_size=self.rollout_prompts,
            n_samples_per_prompt=self.samples_per_prompt,
            train_batch_size=self.rollout_prompts * self.samples_per_prompt,
            actor_lr=self.actor_lr,
            kl_coef=self.kl_coef,
            estimator=estimator,
            max_samples=max_samples,
            extra=[
                "--train.num_episodes", str(episodes),
                "--ckpt.save_steps", str(self.eval_every), "--ckpt.save_hf", "--ckpt.disable_ds", *extra,
            ],  # fmt: skip
        )


QUICK = DemoSettings(ppo_steps=2, eval_every=1, sft_extended_epochs=3)


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


def _grade(label: dict, response: str, finished: bool) -> bool:
    return check(PromptSpec.from_dict(label), response, finished=finished)[0]


def rollout_accuracy(rollout_log: str, grade=_grade) -> List[float]:
    """Checker accuracy of each step's sampled rollouts (PPO prompts, temperature 1), from the
    coherent reward's rollout log. `grade(label, response, finished)`: the task's checker."""
    by_step: Dict[int, List[bool]] = {}
    with open(rollout_log) as f:
        for line in f:
            row = json.loads(line)
            ok = grade(json.loads(row["label"]), row["response"].strip(), not row["truncated"])
            by_step.setdefault(row["step"], []).append(ok)
    return [sum(v) / len(v) for _, v in sorted(by_step.items())]


def heldout_curve(run_dir: str, final_model: str, start: dict, world, final_step: int, specs=None) -> List[dict]:
    """Held-out accuracy at step 0 (the SFT model, `start`), at every saved checkpoint and at the end.
    `specs`: the (in-domain, out-of-domain) prompts to evaluate on; default the world's test
    prompts (`demo.paper` passes the validation split while it chooses settings)."""
    specs_in, specs_out = specs if specs is not None else (world.eval_in, world.eval_out)
    points = {0: start}
    for path in glob.glob(os.path.join(run_dir, "ckpt", "global_step*_hf")):
        step = int(re.search(r"global_step(\d+)_hf$", path).group(1))
        points[step] = evaluate(path, specs_in, specs_out)
    if final_step not in points:
        points[final_step] = evaluate(final_model, specs_in, specs_out)
    return [
        {"step": s, **{k: e[k] for k in METRICS}} for s, e in sorted(points.items())
    ]


def mean_sd(values: List[float]) -> str:
    if len(values) == 1:
        return f"{values[0]:.3f}"
    return f"{statistics.mean(values):.3f} ± {statistics.stdev(values):.3f}"


def summarize(evals: List[dict]) -> Dict[str, str]:
    return {m: mean_sd([e[m] for e in evals]) for m in METRICS}


def relative_to_oracle(evals: Dict[str, List[dict]], seeds: List[int]) -> Dict[str, dict]:
    """Each method's held-out gain over SFT (same seed), and that gain as a fraction of the
    oracle's: fraction = mean gain / mean oracle gain (per domain), with the per-seed gains."""
    out = {}
    sft = evals["SFT"]
    oracle = evals.get(ORACLE, [])
    for name, runs in evals.items():
        if name in ("base", "SFT"):
            continue
        row = {}
        for domain, key in DOMAINS:
            gains = [r[key] - s[key] for r, s in zip(runs, sft)]
            oracle_gains = [r[key] - s[key] for r, s in zip(oracle, sft)][: len(gains)]
            og = statistics.mean(oracle_gains) if oracle_gains else float("nan")
            row[domain] = {
                "gain_per_seed": [round(g, 4) for g in gains],
                "gain_mean": round(statistics.mean(gains), 4),
                "gain_sd": round(statistics.stdev(gains), 4) if len(gains) > 1 else None,
                "oracle_gain_mean_same_seeds": round(og, 4),
                "fraction_of_oracle": round(statistics.mean(gains) / og, 3) if og and og > 0 else None,
            }
        out[name] = row
    return out


def check_rewards(sft: str, base: str, world, seed: int) -> dict:
    from demo.reward_check import reward_check

    return reward_check(sft, base, world.eval_in, world.eval_out, seed=seed)


def reward_check_summary(checks: List[dict]) -> Dict[str, Dict[str, Optional[float]]]:
    """Mean over seeds of the win rate of a correct response over each wrong kind, per domain, for
    the summed reward and the length-normalised one (the demo's SRPPO uses the latter)."""
    from demo.reward_check import KINDS

    out = {}
    for kind in KINDS:
        row = {}
        for domain, tag in (("in_domain", "in"), ("out_of_domain", "out")):
            for key, label in (("win_rate", "sum"), ("mean_aggregate_win_rate", "mean")):
                vals = [c[domain][kind][key] for c in checks if c[domain].get(kind)]
                row[f"{label}_{tag}"] = round(statistics.mean(vals), 3) if vals else None
        out[kind] = row
    return out


def main(argv=None) -> dict:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--out", default="demo_out")
    parser.add_argument("--quick", action="store_true", help="one seed, tiny budgets: checks every stage runs")
    parser.add_argument("--seeds", type=int, default=3)
    parser.add_argument("--ppo_steps", type=int, default=None, help="override the PPO steps (default: DemoSettings)")
    args = parser.parse_args(argv)
    settings = QUICK if args.quick else DemoSettings()
    if args.ppo_steps is not None:
        settings = replace(settings, ppo_steps=args.ppo_steps)
        try:
            settings.ppo_config()
        except ValueError as e:
            parser.error(f"--ppo_steps {args.ppo_steps}: {e}")
    seeds = [0] if args.quick else list(range(args.seeds))
    new_output_folder(parser, args.out)
    timer = Timer()

    world = make_world(0)
    base = os.path.join(args.out, "base")
    timer.run(
        "pretrain base", pretrain, base, world=world, seed=0, config=PretrainConfig(steps=60) if args.quick else None
    )
    prompts = write_prompts_jsonl(os.path.join(args.out, "ppo_prompts.jsonl"), world.ppo_prompts)
    evals: Dict[str, List[dict]] = {"base": [timer.run("eval base", evaluate, base, world.eval_in, world.eval_out)]}
    curves: Dict[str, dict] = {}
    checks: List[dict] = []

    def ppo(name, seed, sft, sft_eval, reward_flags, estimator="reinforce_baseline"):
        out = os.path.join(args.out, f"{name}_seed{seed}".replace(" ", "_").replace("(", "").replace(")", ""))
        cfg = settings.ppo_config(estimator)
        result = timer.run(f"{name} seed {seed}", run_ppo, sft, prompts, out, reward_flags(out), cfg, seed)
        rollout_log = os.path.join(out, "rollouts.jsonl")
        task = rollout_accuracy(rollout_log) if os.path.exists(rollout_log) else None
        for i, status in enumerate(result.steps):
            status["task_accuracy"] = task[i] if task and i < len(task) else status.get("checker_accuracy")
        heldout = timer.run(
            f"eval {name} seed {seed}", heldout_curve, out, result.model_path, sft_eval, world, settings.ppo_steps
        )
        curves[f"{name}_seed{seed}"] = {"method": name, "seed": seed, "steps": result.steps, "heldout": heldout}
        evals.setdefault(name, []).append({**heldout[-1], "model": result.model_path})
        return out

    for seed in seeds:
        sft = os.path.join(args.out, f"sft_seed{seed}")
        timer.run(f"SFT seed {seed}", run_sft, base, world.demos, sft, SFTConfig(epochs=settings.sft_epochs, seed=seed))
        sft_eval = timer.run(f"eval SFT seed {seed}", evaluate, sft, world.eval_in, world.eval_out)
        evals.setdefault("SFT", []).append(sft_eval)
        ext = os.path.join(args.out, f"sft_extended_seed{seed}")
        timer.run(
            f"SFT extended seed {seed}", run_sft, base, world.demos, ext,
            SFTConfig(epochs=settings.sft_extended_epochs, seed=seed),
        )  # fmt: skip
        evals.setdefault("SFT extended", []).append(
            timer.run(f"eval SFT extended seed {seed}", evaluate, ext, world.eval_in, world.eval_out)
        )
        checks.append(timer.run(f"reward check seed {seed}", check_rewards, sft, base, world, seed))
        ppo("SRPPO", seed, sft, sft_eval, lambda out: coherent_reward_flags(base, out, RECOMMENDED_GUARD))
        ppo(ORACLE, seed, sft, sft_eval, lambda out: checker_reward_flags())
        if seed == 0 and not args.quick:  # once each: the paper-faithful reward and the token-wise variant
            ppo("SRPPO unguarded (paper-faithful)", seed, sft, sft_eval, lambda out: coherent_reward_flags(base, out))
            token_wise = ["--coherent.reward_type", "token", *RECOMMENDED_GUARD]
            # per-token rewards have no per-prompt scalar baseline: plain REINFORCE (whitened returns)
            ppo(
                "SRPPO token-wise (eq. 8)", seed, sft, sft_eval,
                lambda out: coherent_reward_flags(base, out, token_wise), "reinforce",
            )  # fmt: skip

    results = {
        "seeds": seeds,
        "settings": asdict(settings),
        "srppo_flags": RECOMMENDED_GUARD,
        "summary": {name: summarize(e) for name, e in evals.items()},
        "relative_to_oracle": relative_to_oracle(evals, seeds),
        "reward_check": reward_check_summary(checks),
        "reward_check_per_seed": checks,
        "per_seed": evals,
        "curves": curves,
        "stage_seconds": timer.stages,
        "total_seconds": round(time.time() - timer.start, 1),
    }
    write_outputs(args.out, results, format_table(results), lambda path: plot_curves(curves, path), "demo")
    return results


def new_output_folder(parser: argparse.ArgumentParser, out: str, flag: str = "--out") -> None:
    """Create `out` for a demo command, refusing (argparse's exit 2, naming the flag) a file or a
    folder that is not empty, before any work: a finished demo's models and results are never
    overwritten, and a half-written one is never mixed with a new run."""
    if os.path.exists(out) and (not os.path.isdir(out) or os.listdir(out)):
        parser.error(f"{flag} {out} exists and is not empty: a finished run is never overwritten; remove it or choose another {flag}")
    os.makedirs(out, exist_ok=True)


def write_outputs(out: str, results: dict, table: str, plot, tag: str) -> None:
    """The table (console and results.md), results.json (strict JSON: a NaN stops here, not in a
    reader) and the plot: what `demo.run` and `demo_real.run` both leave in `out`."""
    print(table)
    with open(os.path.join(out, "results.md"), "w") as f:
        f.write(table)
    with open(os.path.join(out, "results.json"), "w") as f:
        json.dump(results, f, indent=1, allow_nan=False)
    plot(os.path.join(out, "training_curves.png"))
    print(f"[{tag}] wrote {out}/results.md, results.json, training_curves.png in {results['total_seconds']:.0f} s")


def _fmt(x, spec="+.3f"):
    return "-" if x is None else format(x, spec)


def format_table(results) -> str:
    n = len(results["seeds"])
    s = results["settings"]
    lines = [
        f"Held-out accuracy (exact checker, greedy decoding, 64 in-domain + 64 out-of-domain prompts); "
        f"mean ± std over {n} seed(s) where a stage was run per seed. PPO (every run): {s['ppo_steps']} steps of "
        f"{s['rollout_prompts']} prompts x {s['samples_per_prompt']} samples, actor lr {s['actor_lr']}, "
        f"KL coef {s['kl_coef']}, from the {s['sft_epochs']}-epoch SFT model; SRPPO flags "
        f"{' '.join(results['srppo_flags'])}.",
        "",
        "| model | runs | accuracy | in-domain | out-of-domain | response tokens | truncation |",
        "|---|---|---|---|---|---|---|",
    ]
    for name, row in results["summary"].items():
        runs = len(results["per_seed"][name])
        lines.append(
            f"| {name} | {runs} | {row['accuracy']} | {row['accuracy_in_domain']} | {row['accuracy_out_of_domain']} | "
            f"{row['mean_response_tokens']} | {row['truncation_rate']} |"
        )
    lines += [
        "",
        "Gain over SFT (same seed; mean ± std over seeds) and that gain as a fraction of the oracle's "
        "(PPO with checker reward, same seeds):",
        "",
        "| model | gain in-domain | gain out-of-domain | fraction of oracle in / out |",
        "|---|---|---|---|",
    ]
    for name, row in results["relative_to_oracle"].items():
        cells = []
        for d in ("in", "out"):
            g = row[d]
            sd = f" ± {g['gain_sd']:.3f}" if g["gain_sd"] is not None else ""
            cells.append(f"{g['gain_mean']:+.3f}{sd}")
        frac = " / ".join(_fmt(row[d]["fraction_of_oracle"], ".2f") for d in ("in", "out"))
        lines.append(f"| {name} | {cells[0]} | {cells[1]} | {frac} |")
    lines += ["", *reward_check_lines(results["reward_check"])]
    lines += ["", *stage_time_lines(results)]
    return "\n".join(lines) + "\n"


def reward_check_lines(summary: Dict[str, dict]) -> List[str]:
    """The reward-ranking check's table (`reward_check_summary`), for demo.run and demo.paper."""
    lines = [
        "Reward-ranking check before PPO (`demo.reward_check`, the SFT models of these seeds): how often "
        "the coherent reward scores a correct response above a wrong one on the held-out prompts "
        "(win rate, mean over seeds; 'mean' is the length-normalised reward SRPPO uses here):",
        "",
        "| wrong kind | summed in | summed out | mean in | mean out |",
        "|---|---|---|---|---|",
    ]
    for kind, row in summary.items():
        cells = [_fmt(row[k], ".2f") for k in ("sum_in", "sum_out", "mean_in", "mean_out")]
        lines.append(f"| {kind} | " + " | ".join(cells) + " |")
    return lines


def stage_time_lines(results: dict) -> List[str]:
    return [
        "Stage times (s): " + ", ".join(f"{k} {v:.0f}" for k, v in results["stage_seconds"].items()),
        f"Total: {results['total_seconds']:.0f} s",
    ]


PANELS = [
    ("heldout", "accuracy_out_of_domain", "held-out accuracy, out-of-domain\n(greedy, 64 prompts)"),
    ("heldout", "accuracy_in_domain", "held-out accuracy, in-domain\n(greedy, 64 prompts)"),
    ("steps", "task_accuracy", "checker accuracy of the rollouts\n(PPO prompts, sampled)"),
    ("steps", "coherent/reward_mean", "coherent reward (as optimised)"),
    ("steps", "coherent/sft_logp_per_token", "term 1: log p_SFT(y|x) per token"),
    ("steps", "coherent/base_logp_per_token", "term 2: log p_base(y|x) per token"),
    ("steps", "rollout/response_length_mean", "response length (tokens)"),
    ("steps", "rollout/truncated_rate", "truncation rate (1 - EOS rate)"),
    ("steps", "kl", "KL to the reference (SFT)"),
]


def plot_curves(curves, path, panels=PANELS, title="Mean over seeds, band = min-max over seeds") -> None:
    """A 3x3 grid with a shared step axis: per method, the mean over seeds with a min-max band
    (one seed: its line). `panels`: (curve source, metric key, panel title); demo_real has its own."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    methods = list(dict.fromkeys(c["method"] for c in curves.values()))
    fig, axes = plt.subplots(3, 3, figsize=(13, 9.5), sharex=True)
    for ax, (source, key, panel_title) in zip(axes.flat, panels):
        for i, method in enumerate(methods):
            runs = [c for c in curves.values() if c["method"] == method]
            by_step: Dict[int, List[float]] = {}
            for c in runs:
                for p in c[source]:
                    if p.get(key) is not None:
                        by_step.setdefault(p["step"], []).append(p[key])
            if not by_step:
                continue
            xs = sorted(by_step)
            mean = [statistics.mean(by_step[x]) for x in xs]
            color = f"C{i % 10}"
            label = f"{method} ({len(runs)} seed{'s' if len(runs) > 1 else ''})"
            ax.plot(xs, mean, marker="." if source == "heldout" else None, color=color, label=label)
            if len(runs) > 1:
                ax.fill_between(xs, [min(by_step[x]) for x in xs], [max(by_step[x]) for x in xs], color=color, alpha=0.15)
        ax.set_title(panel_title, fontsize=9)
        ax.grid(alpha=0.3)
    for ax in axes[-1]:
        ax.set_xlabel("PPO step")
    handles, labels = [], []
    for ax in axes.flat:
        for h, lab in zip(*ax.get_legend_handles_labels()):
            if lab not in labels:
                handles.append(h)
                labels.append(lab)
    fig.suptitle(f"{title} (held-out points: step 0 = the SFT model)", fontsize=10)
    fig.legend(handles, labels, loc="center left", bbox_to_anchor=(1.0, 0.5), fontsize=8, frameon=False)
    fig.tight_layout()
    fig.savefig(path, dpi=100, bbox_inches="tight")
    plt.close(fig)


if __name__ == "__main__":
    main()
