"""`python -m openrlhf_coherent.cli.srppo`: the SRPPO recipe (and the paper's baselines) from one YAML file.

    python -m openrlhf_coherent.cli.srppo --config examples/configs/srppo_llama3_8b_min_overlap.yaml \\
        [--dry-run] [--stages sft,ppo] [--set KEY=VALUE ...]

Stage 1 runs stock `openrlhf.cli.train_sft` on the demonstrations (one or more phases); stage 2
runs `openrlhf_coherent.cli.train_ppo_ray` with the SFT output as actor, critic and SFT side of the
coherent reward and `base_model` as the base. `method:` picks a baseline instead of stage 2
(sft_extended, spin, ppo_rm). `--set ppo.actor_lr=5e-8` overrides any key (dotted path into the
YAML, value parsed as YAML). `--dry-run` prints every stage's exact command and its status.
A stage whose output is complete is skipped; an interrupted stage resumes from its last OpenRLHF
checkpoint (`*.save_steps`); nothing is overwritten. Stage 2 calls `ray.init()` as OpenRLHF does,
so under `ray job submit` or with RAY_ADDRESS set it joins that cluster. See docs/cluster.md.
"""

from __future__ import annotations

import argparse
import dataclasses
import os
import shlex
import subprocess
import sys
import time
from typing import Dict, List, Optional, Sequence

from openrlhf_coherent.recipe import resume
from openrlhf_coherent.recipe.config import RecipeConfig, RecipeConfigError, load_config
from openrlhf_coherent.devmode.launch import single_process_env, with_cpu_site
from openrlhf_coherent.redact import mask_argv, mask_text, mask_tree
from openrlhf_coherent.recipe.stages import Stage, build_stages, cuda_available, is_local, select_stages


def parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        prog="python -m openrlhf_coherent.cli.srppo",
        description=__doc__.split("\n\n")[0],
        formatter_class=argparse.RawDescriptionHelpFormatter,
        epilog="Methods and stages: srppo: sft,ppo | ppo_rm: sft,ppo | sft_extended: sft,sft_extended | "
        "spin: sft,spin_pairs,dpo",
    )
    p.add_argument("--config", required=True, help="recipe YAML (examples/configs/*.yaml)")
    p.add_argument("--dry-run", action="store_true", help="print each stage's command and status; run nothing")
    p.add_argument("--stages", default=None, help="comma-separated subset of the method's stages (default: all)")
    p.add_argument("--set", dest="overrides", action="append", default=[], metavar="KEY=VALUE",
                   help="override a config value, e.g. --set ppo.actor_lr=5e-8 --set output_dir=/x (repeatable)")  # fmt: skip
    return p


def stage_env(stage: Stage, cuda: bool) -> Dict[str, str]:
    """Environment added for one stage. A DeepSpeed CLI started as one plain process (no launcher)
    needs torch.distributed's rendezvous variables; without CUDA also the CPU dev mode."""
    if not stage.single_process_distributed:
        return {}
    env = single_process_env()
    if not cuda:
        env["PYTHONPATH"] = with_cpu_site(os.environ.get("PYTHONPATH"))
    return env


def command_line(argv: Sequence[str], env: Dict[str, str]) -> str:
    """The stage's command as printed (dry run, `[srppo] $` line): secrets masked."""
    env = mask_tree(env)
    return " ".join([*(f"{k}={shlex.quote(v)}" for k, v in env.items()), shlex.join(mask_argv(argv))])


def check_before_running(cfg: RecipeConfig, stages: Sequence[Stage]) -> None:
    """What each stage's own tool would refuse, found at plan (and dry-run) time instead of when
    the stage starts: every number on its command line (the shared rules, `numeric`), and the
    models' custom code (the SFT and DPO stages run OpenRLHF's CLIs, which always trust it)."""
    from openrlhf_coherent.config import ConfigError
    from openrlhf_coherent.numeric import argv_items, check_numeric_flags
    from openrlhf_coherent.remote_code import refuse_remote_code

    try:
        for key in ("base_model", "sft_model"):
            refuse_remote_code(getattr(cfg, key), key, cfg.trust_remote_code, "trust_remote_code: true")
        if cfg.method == "ppo_rm":
            refuse_remote_code(cfg.ppo_rm.reward_model, "ppo_rm.reward_model", cfg.trust_remote_code, "trust_remote_code: true")
    except ConfigError as e:
        raise RecipeConfigError(f"{cfg._source}: {e}") from None
    for stage in stages:
        try:
            check_numeric_flags(argv_items(stage.argv))
        except ConfigError as e:
            raise RecipeConfigError(f"{cfg._source}: stage {stage.label}: {e} (from the recipe's values)") from None


def _comment(text: str) -> str:
    """One line of a `#` comment: a newline in a path would end the comment and the rest would
    become a shell line when the dry run is replayed."""
    return text.replace("\r", "\\r").replace("\n", "\\n")


def plan(cfg: RecipeConfig, names: Optional[str], cuda: bool):
    """[(stage, status)] for the selected stages, and the problems that would stop a run: a missing
    input file, or an upstream stage that is neither complete nor part of this run."""
    all_stages = build_stages(cfg, cuda)
    selected = select_stages(all_stages, names, cfg)
    check_before_running(cfg, selected)
    chosen = {id(s) for s in selected}
    problems, produced = [], set()
    out = []
    for stage in all_stages:
        if id(stage) not in chosen:
            if os.path.exists(resume.marker_path(stage)):
                produced.add(stage.output)
            continue
        status = resume.stage_status(stage)
        for key, path in stage.inputs.items():
            if not os.path.exists(path) and path not in produced:
                problems.append(f"{key}: {path} does not exist (stage {stage.label})")
        for need in stage.needs:
            producer = next((s for s in all_stages if s.output == need), None)
            if producer is None and is_local(need) and not os.path.exists(need):
                problems.append(f"sft_model: {need} does not exist (stage {stage.label})")
            elif producer is not None and need not in produced:
                problems.append(f"stage {stage.label} reads {need}, but stage {producer.label} has not finished "
                                f"(run it too: --stages {producer.name},{stage.name})")  # fmt: skip
        produced.add(stage.output)
        out.append((stage, status))
    return out, problems


def save_resolved_config(cfg: RecipeConfig, out_dir: str) -> str:
    import yaml

    os.makedirs(out_dir, exist_ok=True)
    data = {k: v for k, v in dataclasses.asdict(cfg).items() if not k.startswith("_")}
    path = os.path.join(out_dir, f"recipe_config_{time.strftime('%Y%m%d-%H%M%S')}.yaml")
    with open(path, "w") as f:
        yaml.safe_dump(mask_tree(data), f, sort_keys=False)
    return path


def run(args) -> int:
    cfg = load_config(args.config, args.overrides)
    cuda = cuda_available()
    steps, problems = plan(cfg, args.stages, cuda)
    if args.dry_run:
        print(_comment(f"# recipe {args.config}: method {cfg.method}, output_dir {os.path.abspath(cfg.output_dir)}"))
        for problem in problems:
            print(_comment(f"# WARNING: {problem}"))
        for stage, status in steps:
            print(_comment(f"# stage {stage.label}: {resume.describe(stage, status)}"))
            print(command_line(stage.argv, stage_env(stage, cuda)))
        return 0
    if problems:
        raise RecipeConfigError("; ".join(problems))
    saved = save_resolved_config(cfg, os.path.abspath(cfg.output_dir))
    print(f"[srppo] method {cfg.method}; resolved config saved to {saved}", flush=True)
    for stage, status in steps:
        status = resume.stage_status(stage)  # an earlier stage of this run may have changed things
        print(f"[srppo] stage {stage.label}: {resume.describe(stage, status)}", flush=True)
        if status == resume.COMPLETE:
            continue
        if status == resume.RESUME:
            aligned = resume.align_checkpoints(stage)
            if aligned:
                print(f"[srppo] stage {stage.label}: {aligned}", flush=True)
        env = stage_env(stage, cuda)
        print(f"[srppo] $ {command_line(stage.argv, env)}", flush=True)
        start = time.time()
        code = subprocess.call(stage.argv, env={**os.environ, **env})
        if code != 0:
            print(f"[srppo] stage {stage.label} failed (exit {code}). Re-run the same command to resume "
                  f"from its last checkpoint under {stage.ckpt or stage.output}.", file=sys.stderr)  # fmt: skip
            return code
        resume.mark_complete(stage, stage.argv, time.time() - start)
        print(f"[srppo] stage {stage.label} done in {time.time() - start:.0f} s -> {stage.output}", flush=True)
    return 0


def main(argv: Optional[List[str]] = None) -> int:
    args = parser().parse_args(argv)
    try:
        return run(args)
    except RecipeConfigError as e:
        print(f"srppo: config error: {mask_text(str(e))}", file=sys.stderr)  # it may quote a value
        return 2


if __name__ == "__main__":
    sys.exit(main())
