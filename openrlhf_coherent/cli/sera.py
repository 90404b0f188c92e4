"""`python -m openrlhf_coherent.cli.sera`: iterative SeRA (Self-Reviewing and Alignment, Algorithm 1).

    python -m openrlhf_coherent.cli.sera --sft_model SFT --input prefs.jsonl --output_dir sera_out \\
        --prompt_key prompt --chosen_key chosen --rejected_key rejected --apply_chat_template \\
        --dpo.loss dpo --model.beta 0.1 \\
        <any other openrlhf train_dpo flag: --train.batch_size 16 --adam.lr 3e-6 --ds.zero_stage 2 ...>

Round 1 trains on every pair (reference = SFT). Round t >= 2 keeps the global top-k input pairs
by the implicit reward margin under the eq. 7 round reward (the last policies, ensemble weight
--gamma), adds the top-k~ (argmax, argmin) pairs bootstrapped from R distinct samples per prompt
of theta_{t-1}, and trains one epoch from theta_{t-1} with theta_{t-1} as reference. Losses: dpo,
ipo (OpenRLHF's), slic, simpo (openrlhf_coherent/losses.py). Paper defaults: 3 rounds, gamma 0.3,
k 0.7 N, k~ 0.3 N, R 4, temperature 0.7, top-p 0.95. Every round's data and model stay under
--output_dir; re-running the command resumes at the first unfinished round. See docs/sera.md.

Flags this tool does not know go to train_dpo unchanged; those it sets itself are refused.
Everything is checked (flags, the SFT model's config, every input row) before a model loads.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
from typing import List, Optional, Sequence, Tuple

from openrlhf_coherent.config import ConfigError, check_causal_lm, exit_status, flag_value
from openrlhf_coherent.losses import LOSSES
from openrlhf_coherent.redact import wandb_key_from_env

# train_dpo flags the loop sets (the round's model, reference, data, epochs, output).
OWNED_TRAIN_FLAGS = {
    "--model.model_name_or_path": "--sft_model (round 1) / the previous round's model",
    "--ref.model_name_or_path": "the previous round's model (eq. 6)",
    "--data.dataset": "--input (each round writes its own dataset)",
    "--data.prompt_key": "--prompt_key",
    "--data.chosen_key": "--chosen_key",
    "--data.rejected_key": "--rejected_key",
    "--data.apply_chat_template": "--apply_chat_template",
    "--data.input_template": "--input_template",
    "--data.max_len": "--max_len",
    "--train.max_epochs": "--epochs_per_round",
    "--ckpt.output_dir": "--output_dir",
    "--ckpt.path": "--output_dir",
    "--model.ipo_enable": "--dpo.loss ipo",
}


def parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="python -m openrlhf_coherent.cli.sera", description=__doc__.split("\n\n")[0])
    io = p.add_argument_group("data and models")
    io.add_argument("--sft_model", required=True, help="theta_0: the SFT model (round 1's start and reference)")
    io.add_argument("--input", required=True, help="Preference pairs, JSONL (OpenRLHF's DPO format)")
    io.add_argument("--output_dir", required=True, help="Every round's data, model and DONE marker go here")
    io.add_argument("--prompt_key", default="prompt", help="Field with the prompt (bootstrapping samples from it)")
    io.add_argument("--chosen_key", default="chosen")
    io.add_argument("--rejected_key", default="rejected")
    io.add_argument("--apply_chat_template", action="store_true", help="As OpenRLHF's --data.apply_chat_template")
    io.add_argument("--input_template", default=None, help="As OpenRLHF's --data.input_template (plain-text prompts)")
    io.add_argument("--max_len", type=int, default=2048, help="Prompt+response tokens (scoring and --data.max_len)")
    io.add_argument("--trust_remote_code", action="store_true", help="Custom model code, for what this tool loads")
    sera = p.add_argument_group("SeRA (paper defaults)")
    sera.add_argument("--rounds", type=int, default=3, help="T, training rounds (1 epoch each)")
    sera.add_argument("--gamma", type=float, default=0.3, help="Eq. 7 ensemble coefficient (rounds >= 3)")
    sera.add_argument("--select_fraction", type=float, default=0.7, help="k / N: input pairs kept per round >= 2")
    sera.add_argument("--bootstrap_fraction", type=float, default=0.3, help="k~ / N: bootstrapped pairs per round >= 2")
    sera.add_argument("--num_samples", type=int, default=4, help="R distinct samples per prompt")
    sera.add_argument("--temperature", type=float, default=0.7)
    sera.add_argument("--top_p", type=float, default=0.95)
    sera.add_argument("--max_new_tokens", type=int, default=256, help="Per bootstrapped sample (not in the paper)")
    sera.add_argument("--sample_rounds", type=int, default=3, help="Draw R at a time at most this often to find R distinct")
    sera.add_argument("--seed", type=int, default=0, help="A prompt is sampled with seed + its input line")
    sera.add_argument("--aggregate", default="sum", choices=["sum", "mean"], help="Implicit reward: sum (paper) or per-token mean")
    sera.add_argument("--epochs_per_round", type=int, default=1)
    loss = p.add_argument_group("training loss (passed to openrlhf_coherent.cli.train_dpo)")
    loss.add_argument("--dpo.loss", dest="loss", default="dpo", choices=LOSSES)
    loss.add_argument("--model.beta", dest="beta", type=float, default=0.1, help="Beta of every loss (SeRA: 0.2 DPO/SLiC, 1.0 IPO)")
    loss.add_argument("--dpo.simpo_gamma", dest="simpo_gamma", type=float, default=0.0, help="SimPO margin")
    run = p.add_argument_group("execution")
    run.add_argument("--num_actors", type=int, default=1, help="Scoring/sampling Ray actors, one GPU each")
    run.add_argument("--batch_tokens", type=int, default=16384, help="Padded tokens per scoring forward")
    run.add_argument(
        "--train_launcher",
        default=f"{sys.executable} -m",
        help="Prefix that runs a module for training, e.g. 'deepspeed --num_gpus 8 --module' (default: this python -m)",
    )
    return p


def parse(argv: Sequence[str]) -> Tuple[argparse.Namespace, List[str]]:
    """(SeRA options, train_dpo flags), every flag checked."""
    from openrlhf_coherent.numeric import argv_items, check_numeric_flags, check_parsed

    p = parser()
    args, train_args = p.parse_known_args(list(argv))
    # The shared numeric rules: ours, and the train_dpo flags each round will run with (found now,
    # not when round 1's training starts after its sampling).
    check_parsed(p, args)
    check_numeric_flags(argv_items(train_args))
    for flag in train_args:
        name = flag.split("=", 1)[0]
        if name in OWNED_TRAIN_FLAGS:
            raise ConfigError(f"{name} is set by sera for each round; use {OWNED_TRAIN_FLAGS[name]}")
    checks = [
        (args.rounds >= 1, f"--rounds must be >= 1, got {args.rounds}"),
        (0 <= args.select_fraction <= 1, f"--select_fraction must be in [0, 1], got {args.select_fraction}"),
        (args.num_samples >= 2, f"--num_samples must be >= 2 (a pair needs two responses), got {args.num_samples}"),
        (bool(args.prompt_key), "--prompt_key is required (bootstrapping samples from the prompt)"),
        (args.loss == "simpo" or args.simpo_gamma == 0, "--dpo.simpo_gamma needs --dpo.loss simpo"),
        (not args.input_template or "{}" in args.input_template, "--input_template has no {} for the prompt"),
    ]
    for ok, message in checks:
        if not ok:
            raise ConfigError(message)
    try:  # train_dpo's flags go into sera_config.json, round_t/train.log and OpenRLHF's own printing
        train_args = wandb_key_from_env(train_args, "sera")
    except ValueError as e:
        raise ConfigError(str(e)) from None
    return args, absolute_paths(args, train_args)


# train_dpo flags whose values are local files or folders (--eval.dataset, --logger.tensorboard_dir...).
PATH_FLAG_ENDINGS = ("dataset", "_dir", "path")


def _absolute(value: str, must_exist: bool) -> str:
    parts = [p.strip() for p in value.split(",")]  # OpenRLHF's comma-separated dataset lists
    return ",".join(os.path.abspath(p) if p and (os.path.exists(p) or not must_exist) else p for p in parts)


def absolute_paths(args, train_args: Sequence[str]) -> List[str]:
    """Every round trains in a subprocess inside its own round folder: a relative path given on the
    command line (the usual `--output_dir sera_out`) would be read from there. Resolve them now
    against the caller's folder. A model or dataset that is not a local path (a hub id) is kept."""
    args.input = os.path.abspath(args.input)
    args.output_dir = os.path.abspath(args.output_dir)
    args.sft_model = _absolute(args.sft_model, must_exist=True)
    out = list(train_args)
    for i, arg in enumerate(out):
        name, eq, value = arg.partition("=")
        if not name.startswith("--") or not name.endswith(PATH_FLAG_ENDINGS):
            continue
        must_exist = name.endswith("dataset")  # an output folder need not exist yet; a hub dataset never does
        if eq:
            out[i] = f"{name}={_absolute(value, must_exist)}"
        elif i + 1 < len(out) and not out[i + 1].startswith("--"):
            out[i + 1] = _absolute(out[i + 1], must_exist)
    return out


def load_pairs(args) -> List[dict]:
    """Every input row, tokenized as the scorer and train_dpo will (the tokenizer only, no model):
    a malformed line, a missing key or an empty prompt/response fails here with its line number."""
    from transformers import AutoTokenizer

    from openrlhf_coherent.data_tools.rows import TextFormat, load_jobs, row_to_job

    tokenizer = AutoTokenizer.from_pretrained(args.sft_model, trust_remote_code=args.trust_remote_code)
    fmt = TextFormat(args.prompt_key, args.apply_chat_template, args.input_template)
    make_job = row_to_job(tokenizer, fmt, [args.chosen_key, args.rejected_key], args.max_len)
    try:
        jobs, _ = load_jobs(args.input, make_job, "fail")
    except FileNotFoundError:
        raise ConfigError(f"--input {args.input}: no such file") from None
    except ConfigError as e:  # drop the evaluator's --on_bad_row hint: sera trains on every row
        raise ConfigError(str(e).split(" (--on_bad_row")[0]) from None
    if not jobs:
        raise ConfigError(f"--input {args.input}: no preference pairs")
    return [{**job.row, "line": job.line} for job in jobs]


def check_batch_size(args, train_args: Sequence[str], n: int) -> None:
    """train_dpo stops with 'num_update_steps_per_epoch must be positive' when a round's dataset
    is smaller than its batch; say so now, not after a round of sampling."""
    from openrlhf_coherent.sera.loop import round_sizes

    batch = int(flag_value(train_args, "--train.batch_size") or 128)  # train_dpo's default
    sizes = round_sizes(args, n)
    smallest = n if args.rounds == 1 else min(n, sizes["k"] + sizes["k_boot"])
    if smallest < batch:
        raise ConfigError(
            f"--train.batch_size {batch} is larger than a round's dataset ({smallest} pairs: N={n}, "
            f"k={sizes['k']}, k~<={sizes['k_boot']}); pass a smaller --train.batch_size"
        )


def run(args, train_args: Sequence[str]) -> dict:
    from openrlhf_coherent.sera.loop import run_rounds
    from openrlhf_coherent.sera.rounds import check_config

    from openrlhf_coherent.files import check_output_folders

    # Every round's data and model go under --output_dir: it may not be, hold or lie inside the
    # SFT model or the input, and must be a creatable folder.
    check_output_folders([(args.output_dir, "--output_dir")], [(args.sft_model, "--sft_model"), (args.input, "--input")])
    check_causal_lm(args.sft_model, "--sft_model", args.trust_remote_code)
    pairs = load_pairs(args)
    check_batch_size(args, train_args, len(pairs))
    # Recorded by flag name, so a refused resume names the flags that changed.
    flags = {a.dest: a.option_strings[0] for a in parser()._actions if a.option_strings}
    config = {flags[k]: v for k, v in vars(args).items() if k not in ("num_actors", "batch_tokens", "train_launcher")}
    check_config(args.output_dir, {**config, "train_dpo flags": list(train_args), "input pairs": len(pairs)})
    result = run_rounds(args, train_args, pairs)
    summary = {"pairs": len(pairs), "rounds": args.rounds, **result}
    print(f"[openrlhf_coherent] sera summary: {json.dumps(summary)}", flush=True)
    return summary


def main(argv: Optional[Sequence[str]] = None) -> int:
    return exit_status(lambda: run(*parse(sys.argv[1:] if argv is None else argv)))


if __name__ == "__main__":
    sys.exit(main())
