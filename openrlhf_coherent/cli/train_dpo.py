"""`python -m openrlhf_coherent.cli.train_dpo`: OpenRLHF's train_dpo with a choice of preference loss.

    python -m openrlhf_coherent.cli.train_dpo <every openrlhf train_dpo flag> --dpo.loss dpo|ipo|slic|simpo
    deepspeed --module openrlhf_coherent.cli.train_dpo ...            # several GPUs, as with train_dpo

This runs OpenRLHF 0.11.2's own `openrlhf.cli.train_dpo` module as `__main__` (its parser, its
checks, its `train()`, its `DPOTrainer` loop) with one class swapped: `DPOTrainer` becomes a
subclass whose `loss_fn` is the chosen loss (`openrlhf_coherent/losses.py`). Nothing else changes.

  --dpo.loss dpo | ipo   OpenRLHF's own DPOLoss (ipo = its `--model.ipo_enable` path)
  --dpo.loss slic        SLiC-HF hinge on the implicit reward margin (SeRA eq. 8), margin 1/beta
  --dpo.loss simpo       SimPO: length-averaged log-probs, no reference (its forward is skipped;
                         train_dpo still loads the reference model), margin --dpo.simpo_gamma
  (no --dpo.loss)        stock train_dpo, untouched

`--model.beta` is every loss's beta. Without CUDA the CPU dev mode is applied and attention
defaults to `eager`; a single process without a launcher gets the torch.distributed
environment of a one-rank job.
"""

from __future__ import annotations

import argparse
import os
import runpy
import sys
from typing import Optional, Sequence

from openrlhf_coherent import devmode
from openrlhf_coherent.cli.runpy_hooks import replaced
from openrlhf_coherent.devmode.launch import make_single_process
from openrlhf_coherent.config import ConfigError, exit_status
from openrlhf_coherent.redact import check_wandb_key
from openrlhf_coherent.losses import LOSSES, make_loss
from openrlhf_coherent.remote_code import PPO_TRUST_FLAG as TRUST_FLAG  # one flag for PPO, train_dpo, train_srpo

OPENRLHF_CLI = "openrlhf.cli.train_dpo"


def parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="python -m openrlhf_coherent.cli.train_dpo", add_help=False)
    p.add_argument("--dpo.loss", dest="loss", choices=LOSSES, default=None, help="Preference loss (default: stock)")
    p.add_argument("--dpo.simpo_gamma", dest="simpo_gamma", type=float, default=None, help="SimPO's margin (default 0)")
    p.add_argument(TRUST_FLAG, dest="trust_remote_code", action="store_true",
                   help="Allow a model folder's custom code (OpenRLHF loads both models with trust_remote_code=True)")
    return p


def split_args(argv: Sequence[str]):
    """(our options, the rest for OpenRLHF's parser), checked."""
    from openrlhf_coherent.numeric import check_parsed

    p = parser()
    ours, rest = p.parse_known_args(argv)
    check_parsed(p, ours)
    if ours.simpo_gamma is not None and ours.loss != "simpo":
        raise ConfigError("--dpo.simpo_gamma is SimPO's margin: pass it with --dpo.loss simpo")
    if ours.loss not in (None, "dpo", "ipo") and ("--model.ipo_enable" in rest or "--model.label_smoothing" in rest):
        raise ConfigError(f"--dpo.loss {ours.loss} does not use --model.ipo_enable / --model.label_smoothing")
    if ours.loss == "dpo" and "--model.ipo_enable" in rest:
        raise ConfigError("--dpo.loss dpo contradicts --model.ipo_enable (use --dpo.loss ipo)")
    return ours, rest


def trainer_class(loss: str, simpo_gamma: Optional[float]):
    """OpenRLHF's DPOTrainer with `loss_fn` replaced; for SimPO it also hands the loss per-token
    mean log-probs (the trainer computes them next to the sums) and skips the reference forward."""
    import torch
    from openrlhf.trainer.dpo_trainer import DPOTrainer

    class PreferenceLossTrainer(DPOTrainer):
        def __init__(self, *args, **kwargs):
            super().__init__(*args, **kwargs)
            self.loss_fn = make_loss(
                loss, self.beta, label_smoothing=self.args.model.label_smoothing, simpo_gamma=simpo_gamma or 0.0
            )

        def _get_batch_logps(self, per_token_logps, attention_mask, prompt_id_lens):
            sums, means = super()._get_batch_logps(per_token_logps, attention_mask, prompt_id_lens)
            return (means, means) if loss == "simpo" else (sums, means)

        def concatenated_forward(self, model, chosen_ids, c_mask, reject_ids, r_mask, prompt_id_lens):
            if loss == "simpo" and model is self.ref_model:
                zeros = torch.zeros(chosen_ids.shape[0], device=chosen_ids.device)
                return zeros, zeros, [], 0  # SimPO has no reference term
            return super().concatenated_forward(model, chosen_ids, c_mask, reject_ids, r_mask, prompt_id_lens)

    PreferenceLossTrainer.__name__ = f"DPOTrainer[{loss}]"
    return PreferenceLossTrainer



def check_dpo_args(args, trust_remote_code: bool, check_data: bool = True) -> None:
    """What train_dpo and train_srpo check before any model loads: every numeric flag, that neither
    model folder runs code unasked (OpenRLHF loads both with trust_remote_code=True), that every
    local dataset exists and is not empty (`check_data`: off when a command line is only parsed,
    e.g. a preset script's placeholder paths), and the output and checkpoint folders against what
    the run reads."""
    from openrlhf_coherent.files import check_training_folders, check_weights_complete, local_files
    from openrlhf_coherent.numeric import check_numeric_flags, tree_items
    from openrlhf_coherent.remote_code import refuse_remote_code

    check_numeric_flags(tree_items(args))
    ref = args.ref.model_name_or_path or args.model.model_name_or_path
    models = [(args.model.model_name_or_path, "--model.model_name_or_path"), (ref, "--ref.model_name_or_path")]
    for path, flag in models:
        refuse_remote_code(path, flag, trust_remote_code, TRUST_FLAG)
        check_weights_complete(path, flag)
    reads = list(models)
    for flag, datasets in (("--data.dataset", args.data.dataset), ("--eval.dataset", getattr(args.eval, "dataset", None))):
        for path in (p.strip() for p in (datasets or "").split(",") if p.strip()):
            if not check_data:
                continue
            if path.lower().endswith((".json", ".jsonl")) or path.startswith(("/", "./", "../", "~")):
                if not os.path.exists(os.path.expanduser(path)):
                    raise ConfigError(f"{flag} {path}: no such file or folder")
            if os.path.isfile(path) and os.path.getsize(path) == 0:
                raise ConfigError(f"{flag} {path}: is empty, no preference pairs to train on")
        reads += [(p, flag) for p in local_files(datasets)]
    check_training_folders(
        [(args.ckpt.output_dir, "--ckpt.output_dir")], (args.ckpt.path, "--ckpt.path"), reads, args.ckpt.save_steps > 0
    )


def check_preference_data(args) -> None:
    """Every local JSONL preference file, row by row, before the two models load: a malformed line,
    a missing key or a value that is neither text nor chat messages fails naming file and line."""
    from openrlhf_coherent.data_tools.rows import BadRow, check_messages, read_jsonl

    data = args.data
    keys = [k for k in (data.prompt_key, data.chosen_key, data.rejected_key) if k]
    for flag, datasets in (("--data.dataset", data.dataset), ("--eval.dataset", getattr(args.eval, "dataset", None))):
        for path in (datasets or "").split(","):
            path = path.strip()
            if not path.lower().endswith((".json", ".jsonl")) or not os.path.isfile(path):
                continue  # a hub dataset or another format: OpenRLHF's loader reports it
            if path.lower().endswith(".json"):
                with open(path, encoding="utf-8") as f:
                    if f.read(1) == "[":
                        continue  # a JSON array, not JSON lines
            for line, row in read_jsonl(path):
                try:
                    if isinstance(row, BadRow):
                        raise row
                    for key in keys:
                        value = row.get(key)
                        if value is None:
                            raise BadRow(line, f"missing key {key!r}")
                        if data.apply_chat_template and not isinstance(value, str):
                            check_messages(value, line, f"{key!r}")
                        elif not isinstance(value, str):
                            raise BadRow(line, f"{key!r} is not a string (pass --data.apply_chat_template for chat messages)")
                except BadRow as e:
                    raise ConfigError(f"{flag} {path}: {e}") from None


def main(argv: Optional[Sequence[str]] = None) -> int:
    return exit_status(lambda: _run(sys.argv[1:] if argv is None else argv))


def _run(argv: Sequence[str]) -> None:
    ours, rest = split_args(argv)
    if "-h" in rest or "--help" in rest:  # OpenRLHF's parser prints its own flags after ours
        print(parser().format_help().replace("usage:", "openrlhf_coherent flags, then OpenRLHF's train_dpo usage:", 1))
    devmode.apply()  # import stand-ins; CPU shims only without CUDA
    make_single_process()
    if devmode.cpu_mode() and "--ds.attn_implementation" not in rest:
        rest = [*rest, "--ds.attn_implementation", "eager"]  # OpenRLHF's default, flash-attn, needs CUDA
    import openrlhf.trainer.dpo_trainer as dpo_trainer

    trainer = dpo_trainer.DPOTrainer
    if ours.loss is not None:
        # train_dpo does `from openrlhf.trainer.dpo_trainer import DPOTrainer` when it runs, so it
        # picks up the subclass set here.
        trainer = trainer_class(ours.loss, ours.simpo_gamma)
        print(f"[openrlhf_coherent] train_dpo: --dpo.loss {ours.loss} ({trainer.__name__})", flush=True)
    import openrlhf.utils.config as openrlhf_config

    original_hierarchize = openrlhf_config.hierarchize

    def hierarchize(flat_args):  # OpenRLHF's args tree, checked before train() loads a model
        args = original_hierarchize(flat_args)
        check_wandb_key(args)  # before OpenRLHF prints every argument
        check_dpo_args(args, ours.trust_remote_code)
        check_preference_data(args)
        return args

    sys.argv = [OPENRLHF_CLI, *rest]
    with replaced(dpo_trainer, "DPOTrainer", trainer), replaced(openrlhf_config, "hierarchize", hierarchize):
        runpy.run_module(OPENRLHF_CLI, run_name="__main__", alter_sys=True)


if __name__ == "__main__":
    sys.exit(main())
