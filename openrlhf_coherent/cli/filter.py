"""Keep the rows of a dataset with the highest coherent reward (SFT-data filtering, SRPPO paper sec. 5).

    # score and filter in one go, cross-fitted over 3 folds (fold i scored by a model trained without it)
    python -m openrlhf_coherent.cli.filter --sft_models sft_wo0,sft_wo1,sft_wo2 --base_model BASE \
        --input sft_data.jsonl --output kept.jsonl --top_fraction 0.5 --by mean
    # or filter a file that `cli.score` already scored
    python -m openrlhf_coherent.cli.filter --input scored.jsonl --output kept.jsonl --threshold 0

With models, rows are first scored into --scores (append-only, resumable; default
<output>.scored.jsonl); the kept rows are then written to --output whole, in input order.
Score a model's own training data with a model that did not see it (--sft_models): an SFT model
rates what it memorised too high. See docs/evaluator.md.
"""

from __future__ import annotations

import argparse
import math

from openrlhf_coherent.config import ConfigError
from openrlhf_coherent.data_tools.common import (
    add_common_args,
    add_selection_args,
    check_files,
    check_selection,
    print_summary,
    run_cli,
    select,
)
from openrlhf_coherent.data_tools.output import read_rows, write_rows
from openrlhf_coherent.data_tools.responses import add_response_args, fold_assigner, score_responses, sft_model_list


def parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="python -m openrlhf_coherent.cli.filter", description=__doc__.split("\n\n")[0])
    add_common_args(p)
    add_selection_args(p, "coherent reward (see --by)")
    p.add_argument("--by", default="sum", choices=["sum", "mean"], help="coherent_reward (sum) or coherent_reward_mean")
    models = p.add_argument_group("scoring (leave out to filter an already scored --input)")
    models.add_argument("--sft_model", default=None, help="One SFT model for all rows")
    models.add_argument("--sft_models", default=None, help="Cross-fitting: k comma-separated SFT models, model i trained without fold i")
    models.add_argument("--fold_key", default=None, help="Field with each row's fold (0..k-1); default: input line number %% k")
    models.add_argument("--scores", default=None, help="Where scored rows go (default: <output>.scored.jsonl)")
    add_response_args(models, base_required=False)  # checked in run(): only needed when scoring here
    return p


def run(args) -> None:
    check_selection(args)
    key = "coherent_reward" if args.by == "sum" else "coherent_reward_mean"
    summary = {}
    scores = args.input
    if args.sft_model or args.sft_models:
        if not args.base_model:
            raise ConfigError("scoring here (--sft_model/--sft_models) needs --base_model")
        sft_models = sft_model_list(args)
        scores = args.scores or args.output + ".scored.jsonl"
        check_files([(args.input, "--input")], streams=[(scores, "--scores")], wholes=[(args.output, "--output")])
        summary = score_responses(args, scores, "--scores", sft_models, fold_assigner(args.fold_key, len(sft_models)))
    else:
        check_files([(args.input, "--input")], wholes=[(args.output, "--output")])
    rows = read_rows(scores)
    for number, row in enumerate(rows, start=1):
        value = row.get(key)
        if not isinstance(row.get("line"), int) or not isinstance(value, (int, float)) or not math.isfinite(value):
            raise ConfigError(
                f"--input {scores}: row {number} has no finite {key!r} and input `line`; score the file first "
                "(or pass --sft_model(s) and --base_model)"
            )
    kept = select(rows, key, args)
    write_rows(args.output, kept)
    print_summary("filter", {**summary, "rows": len(rows), "kept": len(kept), "by": key})


def main(argv=None) -> None:
    run_cli(run, argv, parser())


if __name__ == "__main__":
    main()
