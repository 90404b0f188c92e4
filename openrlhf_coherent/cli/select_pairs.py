"""Keep the preference pairs with the largest reward margin (SeRA sec. 3.2, IRM-based selection).

    # implicit reward margin of the policy being trained (SeRA eq. 5)
    python -m openrlhf_coherent.cli.select_pairs --reward implicit --policy_model POLICY --ref_model REF \
        --input prefs.jsonl --output selected.jsonl --apply_chat_template --top_fraction 0.7
    # or the coherent reward (SFT vs base) as the judge
    python -m openrlhf_coherent.cli.select_pairs --reward coherent --sft_model SFT --base_model BASE ...
    # SeRA eq. 7 round reward at round t >= 3: policy theta_{t-1}, ref theta_{t-2}, ensemble theta_{t-3}
    python -m openrlhf_coherent.cli.select_pairs --reward implicit --policy_model T1 --ref_model T2 \
        --ensemble_model T3 --ensemble_gamma 0.3 ...

margin = r(prompt, chosen) - r(prompt, rejected), with r = log p_num(y|x) - log p_den(y|x) summed
(or, --aggregate mean, averaged) over response tokens. Both responses of every pair are first
scored into --scores (append-only, resumable; default <output>.scored.jsonl); the global top
pairs then go to --output whole, in input order, with `margin`, `chosen_reward`,
`rejected_reward`. The summary counts the pairs whose margin is negative (the judge prefers the
rejected response). See docs/evaluator.md.
"""

from __future__ import annotations

import argparse

from openrlhf_coherent.data_tools.common import (
    add_common_args,
    add_reward_model_args,
    add_selection_args,
    check_files,
    check_selection,
    ensemble_kwargs,
    print_summary,
    reward_models,
    run_cli,
    select,
    text_format,
)
from openrlhf_coherent.data_tools.output import read_rows, write_rows
from openrlhf_coherent.data_tools.pipeline import ScoringRound, score_file
from openrlhf_coherent.data_tools.rows import row_to_job


def parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="python -m openrlhf_coherent.cli.select_pairs", description=__doc__.split("\n\n")[0])
    add_common_args(p)
    p.add_argument("--chosen_key", default="chosen")
    p.add_argument("--rejected_key", default="rejected")
    p.add_argument("--scores", default=None, help="Where scored pairs go (default: <output>.scored.jsonl)")
    add_reward_model_args(p)
    add_selection_args(p, "margin")
    return p


def scored_pair(job, s) -> dict:
    """Sums and lengths, whatever --aggregate is, so a re-run can select by either."""
    chosen, rejected = s
    return {
        **job.row,
        "line": job.line,
        "chosen_reward_sum": chosen["reward"],
        "rejected_reward_sum": rejected["reward"],
        "chosen_length": chosen["length"],
        "rejected_length": rejected["length"],
        "truncated": any(job.truncated),
    }


def with_margin(row: dict, aggregate: str) -> dict:
    if aggregate == "sum":
        chosen, rejected = row["chosen_reward_sum"], row["rejected_reward_sum"]
    else:
        chosen = row["chosen_reward_sum"] / max(row["chosen_length"], 1)
        rejected = row["rejected_reward_sum"] / max(row["rejected_length"], 1)
    return {**row, "chosen_reward": chosen, "rejected_reward": rejected, "margin": chosen - rejected}


def run(args) -> None:
    check_selection(args)
    scores = args.scores or args.output + ".scored.jsonl"
    check_files([(args.input, "--input")], streams=[(scores, "--scores")], wholes=[(args.output, "--output")])
    (numerator, _), (denominator, _) = reward_models(args)
    from transformers import AutoTokenizer

    tokenizer = AutoTokenizer.from_pretrained(numerator, trust_remote_code=args.trust_remote_code)
    make_job = row_to_job(tokenizer, text_format(args), [args.chosen_key, args.rejected_key], args.max_len)
    models = ScoringRound(numerator, denominator, actor_kwargs=ensemble_kwargs(args))
    summary = score_file(args, scores, "--scores", ("chosen_reward_sum", "rejected_reward_sum"), make_job, [models], scored_pair)

    rows = [with_margin(r, args.aggregate) for r in read_rows(scores)]
    kept = select(rows, "margin", args)
    write_rows(args.output, kept)
    negative = sorted(r["line"] for r in rows if r["margin"] < 0)
    print_summary(
        "select-pairs",
        {**summary, "pairs": len(rows), "negative_margin": len(negative), "negative_margin_lines": negative[:100],
         "kept": len(kept), "min_kept_margin": min((r["margin"] for r in kept), default=None),
         "reward": args.reward, "aggregate": args.aggregate, "ensemble_model": args.ensemble_model},
    )  # fmt: skip


def main(argv=None) -> None:
    run_cli(run, argv, parser())


if __name__ == "__main__":
    main()
