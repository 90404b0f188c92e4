"""Score (prompt, response) rows with the coherent reward r = log p_SFT(y|x) - log p_base(y|x).

    python -m openrlhf_coherent.cli.score --sft_model SFT --base_model BASE \
        --input data.jsonl --output scored.jsonl --apply_chat_template --num_actors 8

Writes each input row plus `line` (its input line number), `coherent_reward` (sum over response
tokens), `coherent_reward_mean`, `sft_logp`, `base_logp`, `response_length`, `response_truncated`,
appending as batches finish. Re-running the same command scores only the lines not yet in
--output. See docs/evaluator.md.
"""

from __future__ import annotations

import argparse

from openrlhf_coherent.data_tools.common import add_common_args, check_files, print_summary, run_cli
from openrlhf_coherent.data_tools.responses import add_response_args, score_responses


def parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="python -m openrlhf_coherent.cli.score", description=__doc__.split("\n\n")[0])
    add_common_args(p)
    add_response_args(p)
    p.add_argument("--sft_model", required=True, help="SFT model: the log p_SFT term")
    return p


def run(args) -> None:
    check_files([(args.input, "--input")], streams=[(args.output, "--output")])
    summary = score_responses(args, args.output, "--output", [(args.sft_model, "--sft_model")], lambda job: 0)
    print_summary("score", summary)


def main(argv=None) -> None:
    run_cli(run, argv, parser())


if __name__ == "__main__":
    main()
