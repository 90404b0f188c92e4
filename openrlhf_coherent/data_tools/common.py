"""What the four evaluator CLIs share: flags, model checks before Ray starts, top-k selection, the summary."""

from __future__ import annotations

import argparse
import json
import math
import os
import sys
from typing import Dict, List, Optional, Sequence, Tuple

from openrlhf_coherent.config import ConfigError, check_causal_lm, check_number, check_same_tokenizer, exit_status

from .rows import ON_BAD_ROW, BadRow, TextFormat


def add_common_args(
    parser: argparse.ArgumentParser, prompt_key_default: Optional[str] = "prompt", output_help: str = "JSONL file to write"
) -> None:
    io = parser.add_argument_group("input / output")
    io.add_argument("--input", required=True, help="JSONL file to read")
    io.add_argument("--output", required=True, help=output_help)
    io.add_argument(
        "--on_bad_row",
        default="fail",
        choices=ON_BAD_ROW,
        help="A malformed JSON line, missing key, empty response or over-long prompt: skip it (reported with its "
        "line number and counted in the summary) or stop before anything is written. Default: fail",
    )
    data = parser.add_argument_group("text formation (as OpenRLHF's --data.* flags)")
    data.add_argument(
        "--prompt_key",
        default=prompt_key_default,
        help="Field with the prompt (a string, or chat messages with --apply_chat_template). Empty string: the "
        "response field holds a whole conversation whose last message is the response",
    )
    data.add_argument("--apply_chat_template", action="store_true", help="Use the tokenizer's chat template, as OpenRLHF does")
    data.add_argument("--input_template", default=None, help="Format string with {} applied to plain-text prompts")
    data.add_argument("--max_len", type=int, default=2048, help="Max prompt+response tokens; longer responses are cut and flagged")
    run = parser.add_argument_group("execution")
    run.add_argument("--num_actors", type=int, default=1, help="Ray actors, one GPU each (fake GPUs on CPU)")
    run.add_argument("--batch_tokens", type=int, default=16384, help="Padded tokens per forward pass")
    run.add_argument("--trust_remote_code", action="store_true", help="Allow custom model code from the model folders")


def text_format(args) -> TextFormat:
    if args.input_template and "{}" not in args.input_template:
        raise ConfigError(f"--input_template {args.input_template!r} has no {{}} for the prompt")
    return TextFormat(args.prompt_key or None, args.apply_chat_template, args.input_template)


def check_args(args) -> None:
    if args.num_actors < 1:
        raise ConfigError(f"--num_actors must be >= 1, got {args.num_actors}")
    if args.batch_tokens < 1 or args.max_len < 2:
        raise ConfigError("--batch_tokens must be >= 1 and --max_len >= 2")


def check_sampling(args) -> None:
    """The sampling flags of bootstrap-pairs and spin-pairs, before Ray and the model load."""
    check_number("--temperature", args.temperature, low=0)
    check_number("--top_p", args.top_p, low=0, high=1)
    check_number("--vllm_gpu_memory_utilization", args.vllm_gpu_memory_utilization, low=0, high=1)
    if args.max_new_tokens < 1:
        raise ConfigError(f"--max_new_tokens must be >= 1, got {args.max_new_tokens}")


def check_files(inputs: Sequence[Tuple[str, str]], streams: Sequence[Tuple[str, str]] = (), wholes: Sequence[Tuple[str, str]] = ()) -> None:
    """(path, flag) of every input file, appended-to stream and whole-file output, checked before any
    model loads: inputs exist, outputs can be written and alias no input or each other (real paths),
    and an existing whole-file output is one of ours (streams check their rows when opened)."""
    from openrlhf_coherent.files import check_outputs

    from .output import check_derived_output

    for path, flag in inputs:
        if not os.path.isfile(path):
            raise ConfigError(f"{flag} {path}: no such file")
    check_outputs([*streams, *wholes], inputs)
    for path, flag in wholes:
        check_derived_output(path, flag)


def check_model_pair(numerator: Tuple[str, str], denominator: Tuple[str, str], trust_remote_code: bool) -> None:
    """(path, flag) of both models: causal LMs sharing one tokenizer, whose logits are the LM
    head's output (what the scorer computes). Runs before Ray starts."""
    from openrlhf_coherent.scoring import logit_transform

    for path, flag in (numerator, denominator):
        name = logit_transform(check_causal_lm(path, flag, trust_remote_code))
        if name:
            raise ConfigError(
                f"{flag} {path}: config.{name} transforms the logits after the LM head; the scorer computes "
                "log-probs from decoder -> output embedding only, so it cannot score this model"
            )
    check_same_tokenizer(numerator[0], denominator[0], numerator[1], trust_remote_code, base_flag=denominator[1])


def add_reward_model_args(parser: argparse.ArgumentParser) -> None:
    group = parser.add_argument_group("reward: coherent (SFT vs base) or implicit (policy vs reference)")
    group.add_argument(
        "--reward",
        default="coherent",
        choices=["coherent", "implicit"],
        help="coherent: log p_SFT - log p_base (SRPPO). implicit: log pi_policy - log pi_ref (SeRA's IRM, eq. 5)",
    )
    group.add_argument("--sft_model", help="SFT model (--reward coherent)")
    group.add_argument("--base_model", help="Pretrained base model (--reward coherent)")
    group.add_argument("--policy_model", help="Policy model (--reward implicit; bootstrap-pairs samples from it)")
    group.add_argument("--ref_model", help="Reference model (--reward implicit)")
    group.add_argument("--aggregate", default="sum", choices=["sum", "mean"], help="Reward per response: sum (paper) or per-token mean")
    group.add_argument(
        "--ensemble_model",
        default=None,
        help="--reward implicit only: an older policy theta_{t-3} for SeRA's eq. 7 round reward "
        "(1-g) log(pi_policy/pi_ref) + g log(pi_ref/pi_ensemble), with policy = theta_{t-1}, ref = theta_{t-2}",
    )
    group.add_argument("--ensemble_gamma", type=float, default=0.3, help="g in eq. 7 (SeRA: 0.3); only with --ensemble_model")


def reward_models(args) -> Tuple[Tuple[str, str], Tuple[str, str]]:
    """((numerator path, flag), (denominator path, flag)) for --reward, checked."""
    names = ("--sft_model", "--base_model") if args.reward == "coherent" else ("--policy_model", "--ref_model")
    pair = tuple((getattr(args, n[2:]), n) for n in names)
    for path, flag in pair:
        if not path:
            raise ConfigError(f"--reward {args.reward} needs {flag}")
    check_model_pair(pair[0], pair[1], args.trust_remote_code)
    if getattr(args, "ensemble_model", None):
        if args.reward != "implicit":
            raise ConfigError("--ensemble_model (SeRA eq. 7) needs --reward implicit")
        check_number("--ensemble_gamma", args.ensemble_gamma, low=0, low_open=False, high=1)
        check_model_pair(pair[1], (args.ensemble_model, "--ensemble_model"), args.trust_remote_code)
    return pair


def ensemble_kwargs(args) -> Dict:
    """PairScorer keyword arguments for SeRA's eq. 7 round reward (empty without --ensemble_model)."""
    if not getattr(args, "ensemble_model", None):
        return {}
    return {"ensemble": args.ensemble_model, "ensemble_gamma": args.ensemble_gamma}


def add_selection_args(parser: argparse.ArgumentParser, what: str) -> None:
    group = parser.add_argument_group(f"selection (give exactly one), by {what}")
    group.add_argument("--top_k", type=int, default=None, help=f"Keep the k rows with the highest {what}")
    group.add_argument("--top_fraction", type=float, default=None, help=f"Keep ceil(f x rows) rows with the highest {what}")
    group.add_argument("--threshold", type=float, default=None, help=f"Keep rows whose {what} is >= this")


def check_selection(args) -> None:
    given = [f for f in ("top_k", "top_fraction", "threshold") if getattr(args, f) is not None]
    if len(given) != 1:
        raise ConfigError(f"give exactly one of --top_k, --top_fraction, --threshold (got {given or 'none'})")
    if args.top_k is not None and args.top_k < 0:
        raise ConfigError(f"--top_k must be >= 0, got {args.top_k}")
    check_number("--top_fraction", args.top_fraction, low=0, low_open=False, high=1)
    check_number("--threshold", args.threshold)  # NaN would keep nothing, silently


def select(rows: Sequence[dict], key: str, args) -> List[dict]:
    """The rows kept by --top_k / --top_fraction / --threshold on `key`, in input-line order.
    Ties break by input line, so a selection is reproducible."""
    if args.threshold is not None:
        kept = [r for r in rows if r[key] >= args.threshold]
    else:
        k = args.top_k if args.top_k is not None else math.ceil(args.top_fraction * len(rows))
        kept = sorted(rows, key=lambda r: (-r[key], r["line"]))[:k]
    return sorted(kept, key=lambda r: r["line"])


def report_bad_rows(bad: Sequence[BadRow]) -> None:
    for e in bad:
        print(f"[openrlhf_coherent] skipped {e} (--on_bad_row skip)", file=sys.stderr)


def print_summary(tool: str, summary: Dict) -> None:
    """One JSON line on stdout, easy to grep from logs and to parse in scripts."""
    print(f"[openrlhf_coherent] {tool} summary: {json.dumps(summary)}")


def run_cli(run, argv: Optional[Sequence[str]], parser: argparse.ArgumentParser) -> None:
    """Parse, apply the dev mode (import stand-ins; CPU shims without CUDA), run; a ConfigError
    (bad flag, model path or input row) prints its message and exits with status 2, like the
    plugin's other CLIs."""
    from openrlhf_coherent import devmode

    from openrlhf_coherent.numeric import check_parsed

    args = parser.parse_args(argv)
    devmode.apply()
    status = exit_status(lambda: (check_parsed(parser, args), run(args)))
    if status:
        sys.exit(status)
