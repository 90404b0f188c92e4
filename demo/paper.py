"""The paper's protocol in miniature (`make demo-paper`): per-method settings chosen on a
validation split, PPO with GAE and a warmed-up critic, the paper's KL coefficients, 2 episodes.

    python -m demo.paper --out demo_paper_out            # the full protocol (~40 min on 2 cores)
    python -m demo.paper --out demo_paper_quick --quick  # every phase once, tiny grid (the test)

The main demo (`demo.run`) runs every method at one setting (actor lr 4e-4, KL 0.05,
`reinforce_baseline`, one pass) chosen so that the oracle clears a bar on the test prompts. The
paper (section 4 and its appendix) instead picks the actor learning rate per method from a grid
and trains PPO with GAE (gamma 1, lambda 0.95) and a critic initialised from the SFT model that is
warmed up with the actor frozen. This command runs that protocol on the demo's world and models:

1. Selection (seed 0 only, `--selection_seed`), on the VALIDATION prompts (`world.val_in` /
   `val_out`, 64 + 64, the same in/out-of-domain mix as the test prompts, disjoint from them):
   * each PPO method (guarded SRPPO, paper-faithful unguarded SRPPO, and the oracle: the same PPO
     with the task's exact checker as reward) over actor lr x KL coefficient (`PaperSettings.lrs`
     x `kls`), from the seed's 2-epoch SFT model;
   * "SFT extended" over its epoch count (`sft_extended_epochs`), the paper's own lever for it;
   * the setting with the highest validation accuracy (all 128 prompts) at the end of the run
     wins; ties go to the smaller learning rate (then the smaller KL, or fewer epochs), i.e. to the
     setting that moves the SFT model least. The choice is written to `<out>/selection.json`.
2. Final evaluation, only then on the TEST prompts (`world.eval_in` / `eval_out`): 3 seeds
   (`--seeds`) of every method at its selected setting (seed 0's run is the selection run, now
   also evaluated on the test prompts), SFT and base, the reward-ranking check (test prompts, as
   in the main demo, so its numbers sit beside it), held-out curves from the saved checkpoints.

The selection phase sees the world only through `SealedWorld`, whose test splits raise
`TestPromptsSealed` until `unseal()`, which `main` calls after `selection.json` is written
(tests/test_demo_paper.py also watches every evaluation of a quick run).

PPO, every run (`PaperSettings.ppo_config`): 2 episodes over the 256 PPO prompts, 16 prompts x 4
samples per rollout buffer (32 buffers), train batch 8 (8 updates per buffer, the paper's
1024 / 128), GAE gamma 1 lambda 0.95, critic from the SFT model at lr `critic_lr`, and the actor
frozen for the first `warmup_fraction` of the buffers: the paper's 35 of about 2 x 64k / 1024 =
125 buffers (2 episodes of UltraFeedback's ~64k prompts, buffer 1024) is 0.28; here 9 of 32 via
OpenRLHF 0.11.2's `--critic.freezing_steps 8` (it trains the actor once `global_step >
freezing_steps`, counting from 0). Outputs in `<out>`: results.md (the table, the selection grid,
the reward check), results.json (strict), selection.json, training_curves.png.
"""

from __future__ import annotations

import argparse
import json
import os
import time
from dataclasses import asdict, dataclass
from typing import Callable, Dict, List, Sequence, Tuple

from demo.evaluate import evaluate
from demo.ppo import PPOConfig, checker_reward_flags, coherent_reward_flags, run_ppo
from demo.pretrain import PretrainConfig, pretrain
from demo.run import (
    ORACLE,
    PANELS,
    RECOMMENDED_GUARD,
    Timer,
    check_rewards,
    heldout_curve,
    new_output_folder,
    plot_curves,
    relative_to_oracle,
    reward_check_lines,
    reward_check_summary,
    rollout_accuracy,
    stage_time_lines,
    summarize,
    write_outputs,
)
from demo.sft import SFTConfig, run_sft
from demo.world import World, make_world, write_prompts_jsonl

SRPPO = "SRPPO"
UNGUARDED = "SRPPO unguarded (paper-faithful)"
SFT_EXTENDED = "SFT extended"
# PPO method -> its reward flags (base model, run folder); everything else is shared.
PPO_METHODS: Dict[str, Callable[[str, str], List[str]]] = {
    SRPPO: lambda base, out: coherent_reward_flags(base, out, RECOMMENDED_GUARD),
    UNGUARDED: lambda base, out: coherent_reward_flags(base, out),
    ORACLE: lambda base, out: checker_reward_flags(),
}
TEST_SPLITS = ("eval_in", "eval_out", "eval_prompts")


@dataclass(frozen=True)
class PaperSettings:
    """The protocol's grid and PPO shape (module docstring). Nothing here was chosen on test
    numbers: the lr grid spans 10x downward from the main demo's 4e-4, the KLs are the paper's,
    the critic lr is ours (the paper's 9e-6 is for 7-8B models; a 0.25M-parameter critic with a
    fresh value head needs a far larger one, as the actor does: 4e-4 here against 5e-8)."""

    lrs: Tuple[float, ...] = (4e-4, 1.3e-4, 4e-5)
    kls: Tuple[float, ...] = (0.2, 0.5)
    sft_epochs: int = 2
    sft_extended_epochs: Tuple[int, ...] = (4, 6, 8)
    episodes: int = 2
    n_prompts: int = 256  # PPO prompts used (the world's first n)
    rollout_prompts: int = 16
    samples_per_prompt: int = 4
    train_batch_size: int = 8  # 8 actor/critic updates per 64-sample buffer (paper: 1024 / 128)
    critic_lr: float = 1e-3
    warmup_fraction: float = 0.28  # paper: 35 of ~125 buffers
    eval_every: int = 8  # checkpoint (and curve point) every this many buffers
    gamma: float = 1.0
    lambd: float = 0.95
    quick: bool = False

    @property
    def ppo_steps(self) -> int:
        return self.episodes * (self.n_prompts // self.rollout_prompts)

    @property
    def warmup_buffers(self) -> int:
        """Buffers with the actor frozen: the paper's fraction of the run, at least one."""
        return max(1, round(self.warmup_fraction * self.ppo_steps))

    def ppo_config(self, lr: float, kl: float, sft: str) -> PPOConfig:
        if self.n_prompts % self.rollout_prompts:
            raise ValueError(f"n_prompts {self.n_prompts} must be a multiple of rollout_prompts {self.rollout_prompts}")
        if self.warmup_buffers >= self.ppo_steps:
            raise ValueError(f"{self.warmup_buffers} warm-up buffers leave no actor update in {self.ppo_steps}")
        return PPOConfig(
            rollout_batch_size=self.rollout_prompts,
            n_samples_per_prompt=self.samples_per_prompt,
            train_batch_size=self.train_batch_size,
            micro_batch_size=self.train_batch_size,
            actor_lr=lr,
            kl_coef=kl,
            estimator="gae",
            max_samples=self.n_prompts,
            extra=[
                "--train.num_episodes", str(self.episodes),
                "--algo.advantage.gamma", str(self.gamma), "--algo.advantage.lambd", str(self.lambd),
                # the paper's critic: initialised from the SFT model, warmed up with the actor frozen
                "--critic.model_name_or_path", sft, "--critic.num_gpus_per_node", "1",
                "--critic.adam.lr", str(self.critic_lr), "--critic.lr_warmup_ratio", "0",
                "--critic.freezing_steps", str(self.warmup_buffers - 1),
                "--ckpt.save_steps", str(self.eval_every), "--ckpt.save_hf", "--ckpt.disable_ds",
            ],  # fmt: skip
        )


# --quick: two learning rates, one KL, two PPO methods, one seed, 2 buffers of 16 prompts (the
# first is critic warm-up): every phase runs once, in a few minutes.
QUICK = PaperSettings(
    lrs=(4e-4, 4e-5), kls=(0.2,), sft_extended_epochs=(3, 4), n_prompts=16, eval_every=1, quick=True
)
QUICK_METHODS = (SRPPO, ORACLE)


class TestPromptsSealed(RuntimeError):
    pass


class SealedWorld:
    """A `World` whose test prompts cannot be read: the selection phase gets this, so no choice
    of settings can depend on them. `unseal()` returns the world (after the choice is written)."""

    def __init__(self, world: World):
        self._world = world

    def __getattr__(self, name):
        if name in TEST_SPLITS:
            raise TestPromptsSealed(f"world.{name}: the test prompts are sealed until the settings are chosen")
        return getattr(self._world, name)

    def unseal(self) -> World:
        return self._world


def setting_key(method: str, setting: dict) -> str:
    if method == SFT_EXTENDED:
        return f"epochs {setting['epochs']}"
    return f"lr {setting['lr']:g}, KL {setting['kl']:g}"


def run_dir_name(method: str, seed: int, setting: dict) -> str:
    tag = f"epochs{setting['epochs']}" if method == SFT_EXTENDED else f"lr{setting['lr']:g}_kl{setting['kl']:g}"
    name = method.replace(" (paper-faithful)", "").replace(" ", "_")
    return f"{name}_{tag}_seed{seed}"


def choose(grid: List[dict]) -> dict:
    """The row with the highest validation accuracy (all validation prompts). Ties go to the
    setting that moves the SFT model least: the smaller lr, then the larger KL; for SFT extended
    the fewer epochs."""

    def order(row):
        s = row["setting"]
        conservative = (s["epochs"],) if "epochs" in s else (s["lr"], -s["kl"])
        return (-row["val"]["accuracy"], *conservative)

    return min(grid, key=order)


class Protocol:
    """One `demo.paper` run: the shared models, the two phases and what they record."""

    def __init__(self, out: str, settings: PaperSettings, methods: Sequence[str], seeds: List[int], selection_seed: int):
        self.out, self.settings, self.methods, self.seeds = out, settings, list(methods), seeds
        self.selection_seed = selection_seed
        self.timer = Timer()
        self.base = os.path.join(out, "base")
        self.runs: Dict[Tuple[str, int, str], dict] = {}  # (method, seed, setting key) -> run record
        self.sft: Dict[int, str] = {}

    def sft_model(self, seed: int, world) -> str:
        """The seed's 2-epoch SFT model (made once; PPO and the critic start from it)."""
        if seed not in self.sft:
            path = os.path.join(self.out, f"sft_seed{seed}")
            self.timer.run(f"SFT seed {seed}", run_sft, self.base, world.demos, path, SFTConfig(epochs=self.settings.sft_epochs, seed=seed))
            self.sft[seed] = path
        return self.sft[seed]

    def train(self, method: str, seed: int, setting: dict, world) -> dict:
        """Train `method` at `setting` from the seed's SFT model, once: the record (run folder,
        final model, per-step status) is reused when the final phase asks for the same run."""
        key = (method, seed, setting_key(method, setting))
        if key in self.runs:
            return self.runs[key]
        out = os.path.join(self.out, run_dir_name(method, seed, setting))
        label = f"{method} {setting_key(method, setting)} seed {seed}"
        if method == SFT_EXTENDED:
            self.timer.run(label, run_sft, self.base, world.demos, out, SFTConfig(epochs=setting["epochs"], seed=seed))
            record = {"model": out, "run_dir": out, "steps": []}
        else:
            sft = self.sft_model(seed, world)
            cfg = self.settings.ppo_config(setting["lr"], setting["kl"], sft)
            prompts = os.path.join(self.out, "ppo_prompts.jsonl")
            result = self.timer.run(label, run_ppo, sft, prompts, out, PPO_METHODS[method](self.base, out), cfg, seed)
            rollout_log = os.path.join(out, "rollouts.jsonl")
            task = rollout_accuracy(rollout_log) if os.path.exists(rollout_log) else None
            for status in result.steps:  # rollout accuracy of every buffer, the warm-up's included
                i = status["step"] - 1
                status["task_accuracy"] = task[i] if task and i < len(task) else status.get("checker_accuracy")
            record = {"model": result.model_path, "run_dir": out, "steps": result.steps}
        self.runs[key] = record
        return record

    def curve(self, record: dict, start: dict, world, specs) -> List[dict]:
        """Accuracy on `specs` at step 0 (`start`), every checkpoint and the end (SFT: one point)."""
        if not record["steps"]:
            return [{"step": 0, **start}]
        return heldout_curve(record["run_dir"], record["model"], start, world, self.settings.ppo_steps, specs)

    # ---- phase 1 ----------------------------------------------------------------------------
    def select(self, world: SealedWorld) -> Dict[str, dict]:
        """Every method's grid on the selection seed, scored on the validation prompts."""
        seed, s = self.selection_seed, self.settings
        val = (world.val_in, world.val_out)
        sft_val = self.timer.run("eval SFT on validation", evaluate, self.sft_model(seed, world), *val)
        selection = {}
        grids = {SFT_EXTENDED: [{"epochs": e} for e in s.sft_extended_epochs]}
        grids.update({m: [{"lr": lr, "kl": kl} for lr in s.lrs for kl in s.kls] for m in self.methods})
        for method, grid in grids.items():
            rows = []
            for setting in grid:
                record = self.train(method, seed, setting, world)
                start = sft_val if method != SFT_EXTENDED else evaluate(record["model"], *val)
                curve = self.curve(record, start, world, val)
                rows.append({"setting": setting, "val": _accuracies(curve[-1]), "val_curve": [_point(p) for p in curve]})
                print(f"[demo-paper] {method} {setting_key(method, setting)}: validation {json.dumps(rows[-1]['val'])}", flush=True)
            selection[method] = {"grid": rows, "selected": choose(rows)["setting"]}
        selection["SFT"] = {"val": _accuracies(sft_val)}
        return selection

    # ---- phase 2 ----------------------------------------------------------------------------
    def final(self, world: World, selection: Dict[str, dict]):
        """Every method at its selected setting, every seed, on the test prompts."""
        test = (world.eval_in, world.eval_out)
        evals: Dict[str, List[dict]] = {"base": [self.timer.run("eval base", evaluate, self.base, *test)]}
        curves: Dict[str, dict] = {}
        checks = []
        for seed in self.seeds:
            sft = self.sft_model(seed, world)
            sft_eval = self.timer.run(f"eval SFT seed {seed}", evaluate, sft, *test)
            evals.setdefault("SFT", []).append(sft_eval)
            checks.append(self.timer.run(f"reward check seed {seed}", check_rewards, sft, self.base, world, seed))
            for method in [SFT_EXTENDED, *self.methods]:
                setting = selection[method]["selected"]
                record = self.train(method, seed, setting, world)
                if method == SFT_EXTENDED:
                    evals.setdefault(method, []).append(self.timer.run(f"eval {method} seed {seed}", evaluate, record["model"], *test))
                    continue
                heldout = self.timer.run(f"eval {method} seed {seed}", self.curve, record, sft_eval, world, test)
                curves[f"{method}_seed{seed}"] = {"method": method, "seed": seed, "steps": record["steps"], "heldout": heldout}
                evals.setdefault(method, []).append({**heldout[-1], "model": record["model"]})
        return evals, curves, checks


def _accuracies(e: dict) -> dict:
    return {k: e[k] for k in ("accuracy", "accuracy_in_domain", "accuracy_out_of_domain")}


def _point(p: dict) -> dict:
    return {"step": p["step"], **_accuracies(p)}


def main(argv=None) -> dict:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--out", default="demo_paper_out")
    parser.add_argument("--quick", action="store_true", help="tiny grid, one seed, two PPO methods: checks every phase runs")
    parser.add_argument("--seeds", type=int, default=3, help="seeds of the final evaluation (0..N-1)")
    parser.add_argument("--selection_seed", type=int, default=0, help="the seed whose runs choose the settings")
    args = parser.parse_args(argv)
    settings = QUICK if args.quick else PaperSettings()
    methods = QUICK_METHODS if args.quick else tuple(PPO_METHODS)
    seeds = [0] if args.quick else list(range(args.seeds))
    if args.seeds < 1:
        parser.error(f"--seeds {args.seeds}: at least 1")
    if args.selection_seed not in seeds:
        parser.error(f"--selection_seed {args.selection_seed}: must be one of the final seeds {seeds} (its runs are reused)")
    new_output_folder(parser, args.out)
    proto = Protocol(args.out, settings, methods, seeds, args.selection_seed)

    world = make_world(0)
    sealed = SealedWorld(world)
    pretrain_cfg = PretrainConfig(steps=60) if args.quick else None
    proto.timer.run("pretrain base", pretrain, proto.base, world=sealed, seed=0, config=pretrain_cfg)
    write_prompts_jsonl(os.path.join(args.out, "ppo_prompts.jsonl"), sealed.ppo_prompts[: settings.n_prompts])

    selection = proto.select(sealed)
    with open(os.path.join(args.out, "selection.json"), "w") as f:  # the choice, before any test prompt is read
        json.dump({"selection_seed": args.selection_seed, "settings": _jsonable(settings), "selection": selection}, f, indent=1, allow_nan=False)
    evals, curves, checks = proto.final(sealed.unseal(), selection)

    results = {
        "seeds": seeds,
        "selection_seed": args.selection_seed,
        "settings": _jsonable(settings),
        "ppo_steps": settings.ppo_steps,
        "warmup_buffers": settings.warmup_buffers,
        "srppo_flags": RECOMMENDED_GUARD,
        "selection": selection,
        "summary": {name: summarize(e) for name, e in evals.items()},
        "relative_to_oracle": relative_to_oracle(evals, seeds) if ORACLE in evals else {},
        "reward_check": reward_check_summary(checks),
        "per_seed": evals,
        "curves": curves,
        "stage_seconds": proto.timer.stages,
        "total_seconds": round(time.time() - proto.timer.start, 1),
    }
    write_outputs(args.out, results, format_table(results), lambda path: plot_curves(curves, path, PAPER_PANELS, TITLE), "demo-paper")
    return results


def _jsonable(settings: PaperSettings) -> dict:
    return {k: list(v) if isinstance(v, tuple) else v for k, v in asdict(settings).items()}


TITLE = "demo-paper: each method at its selected setting; mean over seeds, band = min-max"
# The main demo's panels, with the critic's in place of the two log-likelihood terms.
PAPER_PANELS = [p for p in PANELS if p[1] not in ("coherent/sft_logp_per_token", "coherent/base_logp_per_token")]
PAPER_PANELS[4:4] = [("steps", "critic_loss", "critic loss (the actor is frozen in the warm-up)"), ("steps", "values", "critic values (mean)")]


def format_table(results: dict) -> str:
    s, n = results["settings"], len(results["seeds"])
    lrs = ", ".join(f"{lr:g}" for lr in s["lrs"])
    kls = ", ".join(f"{kl:g}" for kl in s["kls"])
    lines = [
        f"The paper's protocol in miniature. Settings chosen per method on the validation prompts (64 in-domain + "
        f"64 out-of-domain, seed {results['selection_seed']}, highest accuracy at the end of the run); then "
        f"{n} seed(s) at the selected setting on the test prompts (64 + 64, greedy, exact checker). PPO: GAE "
        f"(gamma {s['gamma']:g}, lambda {s['lambd']:g}), critic from SFT at lr {s['critic_lr']:g}, "
        f"{results['ppo_steps']} buffers ({s['episodes']} episodes of {s['n_prompts']} prompts, "
        f"{s['rollout_prompts']} prompts x {s['samples_per_prompt']} samples), the first {results['warmup_buffers']} "
        f"with the actor frozen, train batch {s['train_batch_size']}; grid actor lr {{{lrs}}} x KL {{{kls}}}; "
        f"SFT extended over {{{', '.join(map(str, s['sft_extended_epochs']))}}} epochs.",
        "",
        "| method | selected | test in-domain | test out-of-domain | gain over SFT in / out | fraction of oracle in / out |",
        "|---|---|---|---|---|---|",
    ]
    summary, rel, sel = results["summary"], results["relative_to_oracle"], results["selection"]
    for name, row in summary.items():
        chosen = setting_key(name, sel[name]["selected"]) if name in sel and "selected" in sel[name] else "-"
        gains = fracs = "-"
        if name in rel:
            gains = " / ".join(_gain(rel[name][d]) for d in ("in", "out"))
            fracs = " / ".join("-" if rel[name][d]["fraction_of_oracle"] is None else f"{rel[name][d]['fraction_of_oracle']:.2f}" for d in ("in", "out"))
        lines.append(f"| {name} | {chosen} | {row['accuracy_in_domain']} | {row['accuracy_out_of_domain']} | {gains} | {fracs} |")
    lines += [
        "",
        f"Selection grid (seed {results['selection_seed']}, validation accuracy at the end of each run; "
        f"SFT: {_fmt_acc(sel['SFT']['val'])}; * = selected):",
        "",
        "| method | setting | validation all | in-domain | out-of-domain |",
        "|---|---|---|---|---|",
    ]
    for method, entry in sel.items():
        for row in entry.get("grid", []):
            mark = " *" if row["setting"] == entry["selected"] else ""
            v = row["val"]
            lines.append(
                f"| {method} | {setting_key(method, row['setting'])}{mark} | {v['accuracy']:.3f} | "
                f"{v['accuracy_in_domain']:.3f} | {v['accuracy_out_of_domain']:.3f} |"
            )
    # A choice at the edge of the grid means the best setting may lie outside it (at the smallest
    # lr: the method at best leaves its SFT model as it is); the reader must be told.
    edges = []
    for method, entry in sel.items():
        chosen = entry.get("selected", {})
        for key, values, noun in (("lr", s["lrs"], "learning rate"), ("epochs", s["sft_extended_epochs"], "epoch count")):
            if key in chosen and len(values) > 1 and chosen[key] in (min(values), max(values)):
                edge = "smallest" if chosen[key] == min(values) else "largest"
                edges.append(f"- {method}: selected at the grid's {edge} {noun} ({chosen[key]:g}).")
    lines += ["", *edges] if edges else []
    lines += ["", *reward_check_lines(results["reward_check"]), "", *stage_time_lines(results)]
    return "\n".join(lines) + "\n"


def _gain(g: dict) -> str:
    return f"{g['gain_mean']:+.3f}" + (f" ± {g['gain_sd']:.3f}" if g["gain_sd"] is not None else "")


def _fmt_acc(v: dict) -> str:
    return f"{v['accuracy']:.3f} (in {v['accuracy_in_domain']:.3f}, out {v['accuracy_out_of_domain']:.3f})"


if __name__ == "__main__":
    main()
