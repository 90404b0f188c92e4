"""Score (prompt, response) rows with the coherent reward into a resumable stream (score, filter).

With several SFT models this is cross-fitting: the rows are split into k folds and fold i is
scored with SFT model i, which was trained without fold i. An SFT model has partly memorised its
own training data, so its log p_SFT, and with it the coherent reward, is inflated on exactly the
rows it saw; filtering SFT data with such scores keeps what was memorised, not what is good.
"""

from __future__ import annotations

from typing import Callable, Dict, List, Sequence, Tuple

from openrlhf_coherent.config import ConfigError

from .common import check_model_pair, text_format
from .pipeline import ScoringRound, score_file
from .rows import BadRow, Job, row_to_job



def add_response_args(parser, base_required: bool = True) -> None:
    parser.add_argument("--response_key", default="response", help="Field with the response (or the whole conversation)")
    parser.add_argument("--base_model", required=base_required, help="Pretrained base model: the log p_base term")


def scored_row(job: Job, s: dict) -> dict:
    length = s["length"]
    return {
        **job.row,
        "line": job.line,
        "coherent_reward": s["reward"],
        "coherent_reward_mean": s["reward"] / max(length, 1),
        "sft_logp": s["numerator_logp"],
        "base_logp": s["denominator_logp"],
        "response_length": length,
        "response_truncated": job.truncated[0],
    }


def fold_assigner(fold_key: str, k: int) -> Callable[[Job], int]:
    """Fold of a row: the integer in row[fold_key], or the 1-based input line % k without a key."""

    def fold_of(job: Job) -> int:
        if not fold_key:
            return job.line % k
        value = job.row.get(fold_key)
        if not isinstance(value, int) or isinstance(value, bool) or not 0 <= value < k:
            raise BadRow(job.line, f"fold key {fold_key!r} is {value!r}, expected an integer in [0, {k})")
        return value

    return fold_of


# What every row of a score stream has: a file without them is not ours and is never touched.
SCORED_KEYS = ("coherent_reward", "sft_logp", "base_logp")


def score_responses(
    args, output: str, output_flag: str, sft_models: Sequence[Tuple[str, str]], fold_of: Callable[[Job], int]
) -> Dict:
    """Score args.input into `output` (append-only, resumable); fold i of `fold_of` uses sft_models[i]."""
    base = (args.base_model, "--base_model")
    for sft in sft_models:
        check_model_pair(sft, base, args.trust_remote_code)
    from transformers import AutoTokenizer

    tokenizer = AutoTokenizer.from_pretrained(sft_models[0][0], trust_remote_code=args.trust_remote_code)
    make = row_to_job(tokenizer, text_format(args), [args.response_key], args.max_len)
    folds: Dict[int, int] = {}

    def make_job(line: int, row: dict) -> Job:
        job = make(line, row)
        folds[line] = fold_of(job)  # a bad fold value is a bad row, found with the others
        return job

    crossfit = len(sft_models) > 1
    rounds = [
        ScoringRound(
            sft, args.base_model,
            takes=lambda job, i=i: folds[job.line] == i,
            extra={"fold": i, "sft_model": sft} if crossfit else {},
            desc=f"scoring fold {i}" if crossfit else "scoring",
        )
        for i, (sft, _) in enumerate(sft_models)
    ]  # fmt: skip
    return score_file(args, output, output_flag, SCORED_KEYS, make_job, rounds, lambda job, s: scored_row(job, s[0]))


def sft_model_list(args) -> List[Tuple[str, str]]:
    """(path, flag) of each SFT model from --sft_model or --sft_models a,b,c."""
    if bool(args.sft_model) == bool(getattr(args, "sft_models", None)):
        raise ConfigError("give exactly one of --sft_model PATH or --sft_models A,B,... (cross-fitting)")
    if args.sft_model:
        return [(args.sft_model, "--sft_model")]
    paths = [p for p in args.sft_models.split(",") if p]
    return [(p, f"--sft_models (model {i} of {len(paths)})") for i, p in enumerate(paths)]
