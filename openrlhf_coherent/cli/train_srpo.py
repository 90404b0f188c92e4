"""`python -m openrlhf_coherent.cli.train_srpo`: OpenRLHF's train_dpo, trained with SRPO.

    python -m openrlhf_coherent.cli.train_srpo <every openrlhf train_dpo flag> \\
        --srpo.revision_template openrlhf_coherent/templates/srpo/tldr_revision.txt \\
        --srpo.beta 0.01 --srpo.alpha 0.5 [--srpo.average_log_prob] [--srpo.generation_template FILE]

This runs OpenRLHF 0.11.2's own `openrlhf.cli.train_dpo` module as `__main__` (its parser, its
argument checks, its `train()`: strategy, policy Actor, frozen reference Actor, tokenizer, data
blending, dataloader, optimizer, scheduler, checkpoint loading and the final save), with four
things replaced at the narrowest point:

  argparse parse_args               -> the --srpo.* flags join OpenRLHF's parser
  openrlhf.utils.config.hierarchize -> `validate`: templates, flags and local JSONL data checked
                                       before any model loads
  openrlhf.datasets.RewardDataset   -> srpo.dataset.SRPODataset (six sequences per pair)
  dpo_trainer.DPOTrainer            -> srpo.trainer.SRPOTrainer (SRPO loss, reference once)

Without CUDA the CPU dev mode is applied (openrlhf_coherent.devmode; pass
`--ds.attn_implementation eager`) and, when no launcher set them, a single local process's
torch.distributed variables are set, so the command runs as is on a laptop.
"""

from __future__ import annotations

import argparse
import contextlib
import os
import runpy
import sys
from typing import Iterator, Optional, Sequence

from openrlhf_coherent.cli.runpy_hooks import replaced
from openrlhf_coherent import config, devmode
from openrlhf_coherent.devmode.launch import make_single_process
from openrlhf_coherent.config import ConfigError, exit_status
from openrlhf_coherent.redact import check_wandb_key

OPENRLHF_CLI = "openrlhf.cli.train_dpo"
JSON_EXTENSIONS = (".json", ".jsonl")


def add_arguments(parser: argparse.ArgumentParser) -> None:
    group = parser.add_argument_group("SRPO (openrlhf_coherent)")
    group.add_argument("--srpo.beta", type=float, default=None,
                       help="KL regularisation beta of eq. 15-17 (required; paper: 0.01 TL;DR, 1.3 UltraFeedback)")
    group.add_argument("--srpo.alpha", type=float, default=0.5,
                       help="eq. 17: (1 - alpha) * joint loss (eq. 16) + alpha * self-improvement loss (eq. 15)")
    group.add_argument("--srpo.revision_template", type=str, default=None,
                       help="file with {prompt} and {completion}: the revision prompt R(x, y) (required)")
    group.add_argument("--srpo.generation_template", type=str, default=None,
                       help="file with {prompt}: the 0-revision prompt (plain text; sets --data.input_template)")
    group.add_argument("--srpo.average_log_prob", action="store_true", default=False,
                       help="per-token average log-likelihoods instead of sums (the paper's UltraFeedback setting)")
    group.add_argument("--coherent.trust_remote_code", action="store_true", default=False,
                       help="Allow a model folder's custom code (OpenRLHF loads both models with trust_remote_code=True)")
    devmode.allow_fp32_param_dtype(parser)


def validate(args, argv: Sequence[str], parse_only: bool = False) -> None:
    """Checks that need no model; raises ConfigError naming the flag (or the file and line)."""
    check_wandb_key(args)  # before OpenRLHF prints every argument
    from openrlhf_coherent.srpo.dataset import check_jsonl
    from openrlhf_coherent.srpo.templates import load_template

    srpo, data = args.srpo, args.data
    load_template(srpo.revision_template, "--srpo.revision_template", revision=True)
    if srpo.beta is None:  # its range, and --srpo.alpha's, are checked with every other number (check_dpo_args)
        raise ConfigError("--srpo.beta is required (> 0)")
    # DPO flags SRPO does not use: refuse them rather than ignore them silently.
    if config.flag_value(argv, "--model.beta") is not None:
        raise ConfigError("--model.beta is DPO's; train_srpo reads --srpo.beta")
    if args.model.ipo_enable or args.model.label_smoothing or args.model.nll_loss_coef:
        raise ConfigError("--model.ipo_enable, --model.label_smoothing and --model.nll_loss_coef are DPO options; SRPO does not use them")
    if srpo.generation_template:
        if data.apply_chat_template:
            raise ConfigError("--srpo.generation_template is for plain-text prompts; with --data.apply_chat_template the chat template forms the prompt")
        if data.input_template:
            raise ConfigError("give --srpo.generation_template or --data.input_template, not both")
        data.input_template = load_template(srpo.generation_template, "--srpo.generation_template", revision=False).as_input_template()
    if not data.dataset:
        raise ConfigError("--data.dataset is required")
    from openrlhf_coherent.cli.train_dpo import check_dpo_args

    check_dpo_args(args, args.coherent.trust_remote_code, check_data=not parse_only)
    keys = (data.prompt_key, data.chosen_key, data.rejected_key)
    for flag, datasets in (("--data.dataset", data.dataset), ("--eval.dataset", getattr(args.eval, "dataset", None))):
        for path in (datasets or "").split(","):
            path = path.strip()
            if path.lower().endswith(JSON_EXTENSIONS) and os.path.isfile(path):
                check_jsonl(path, flag, keys, bool(data.apply_chat_template))


class _Parsed(Exception):
    def __init__(self, args):
        self.parsed = args


@contextlib.contextmanager
def srpo_installed(argv: Sequence[str], parse_only: bool = False) -> Iterator[None]:
    import openrlhf.datasets
    import openrlhf.trainer.dpo_trainer as dpo_trainer
    import openrlhf.utils.config as openrlhf_config

    from openrlhf_coherent.srpo.dataset import SRPODataset
    from openrlhf_coherent.srpo.trainer import SRPOTrainer

    original_parse_args = argparse.ArgumentParser.parse_args
    original_hierarchize = openrlhf_config.hierarchize

    def parse_args(parser, *args, **kwargs):
        add_arguments(parser)
        argparse.ArgumentParser.parse_args = original_parse_args  # only OpenRLHF's one parser
        return original_parse_args(parser, *args, **kwargs)

    def hierarchize(flat_args):
        args = original_hierarchize(flat_args)
        validate(args, argv, parse_only)
        if parse_only:
            raise _Parsed(args)
        return args

    with contextlib.ExitStack() as stack:
        stack.enter_context(replaced(argparse.ArgumentParser, "parse_args", parse_args))
        stack.enter_context(replaced(openrlhf_config, "hierarchize", hierarchize))
        stack.enter_context(replaced(openrlhf.datasets, "RewardDataset", SRPODataset))
        stack.enter_context(replaced(dpo_trainer, "DPOTrainer", SRPOTrainer))
        yield


def _run(argv: Sequence[str], parse_only: bool):
    saved_argv = sys.argv
    sys.argv = [OPENRLHF_CLI, *argv]
    try:
        with srpo_installed(argv, parse_only):
            runpy.run_module(OPENRLHF_CLI, run_name="__main__", alter_sys=True)
    finally:
        sys.argv = saved_argv


def parse_args(argv: Sequence[str]):
    """The validated `args` tree for a train_srpo command line; loads no model."""
    devmode.apply()
    try:
        _run(list(argv), parse_only=True)
    except _Parsed as parsed:
        return parsed.parsed
    raise RuntimeError(f"{OPENRLHF_CLI} finished without parsing its arguments")


def main(argv: Optional[Sequence[str]] = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    # Before OpenRLHF is imported: vllm/flash_attn import stand-ins, and the CPU shims without CUDA.
    devmode.apply()
    if devmode.cpu_mode():
        make_single_process()
    return exit_status(lambda: _run(argv, parse_only=False))


if __name__ == "__main__":
    sys.exit(main())
