"""Input file -> scored, append-only output stream: the loop that score, filter and select-pairs share.

Everything that can be wrong with the flags or the input is found before Ray starts; the
stream is opened first only to learn which lines a previous run already finished.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Callable, Dict, List, Sequence

from openrlhf_coherent.files import model_identity

from .common import check_args, report_bad_rows
from .output import ScoredStream
from .rows import Job, bad_row_handler, load_jobs
from .runner import ScorerPool, ray_session


@dataclass
class ScoringRound:
    """One set of models and the jobs it scores (cross-fitting runs one round per fold)."""

    numerator: str
    denominator: str
    takes: Callable[[Job], bool] = lambda job: True
    extra: Dict = field(default_factory=dict)  # fields added to every row this round writes
    desc: str = "scoring"
    actor_kwargs: Dict = field(default_factory=dict)  # e.g. SeRA eq. 7's ensemble model


def scored_by(r: ScoringRound) -> Dict:
    """The identities of the models a round scores with (and eq. 7's gamma, which the reward depends on)."""
    stamp = {"numerator": model_identity(r.numerator), "denominator": model_identity(r.denominator)}
    if r.actor_kwargs.get("ensemble"):
        stamp["ensemble"] = model_identity(r.actor_kwargs["ensemble"])
        stamp["ensemble_gamma"] = {"sha": r.actor_kwargs["ensemble_gamma"]}
    return stamp


def score_file(
    args,
    output: str,
    output_flag: str,
    required_keys: Sequence[str],
    make_job: Callable[[int, dict], Job],
    rounds: Sequence[ScoringRound],
    to_row: Callable[[Job, List[dict]], dict],
) -> Dict:
    """Score the rows of args.input not yet in `output` (given by `output_flag`; every row of it has
    `required_keys`), appending `to_row(job, scores)` for each. Returns the summary counts.
    The caller has checked that `output` aliases no input (`common.check_files`)."""
    check_args(args)
    # Which models score each round, recorded in every row: a resume with other models is refused.
    stamps = [scored_by(r) for r in rounds]

    def expected_stamp(row: dict):
        # Only cross-fitting writes `fold` (over any input field of that name); a single round's
        # rows may carry an input field `fold`, which says nothing about the models.
        fold = row.get("fold", 0) if len(stamps) > 1 else 0
        return stamps[fold] if isinstance(fold, int) and 0 <= fold < len(stamps) else {"fold": "unknown"}

    stream = ScoredStream(output, output_flag, required_keys, expected_stamp)
    already = len(stream.done_lines)
    with stream:
        jobs, bad = load_jobs(args.input, make_job, args.on_bad_row, skip_lines=stream.done_lines)
        report_bad_rows(bad)
        on_bad = bad_row_handler(args.input, args.on_bad_row, bad, report=True)
        todo = [(i, r, [j for j in jobs if r.takes(j)]) for i, r in enumerate(rounds)]
        todo = [(i, r, round_jobs) for i, r, round_jobs in todo if round_jobs]  # no actors for an empty round
        if todo:  # else everything is already scored: no Ray start at all
            with ray_session(args.num_actors):
                for i, r, round_jobs in todo:
                    with ScorerPool(
                        args.num_actors, r.numerator, r.denominator,
                        batch_tokens=args.batch_tokens, trust_remote_code=args.trust_remote_code, **r.actor_kwargs,
                    ) as pool:  # fmt: skip
                        write = lambda job, s, extra=r.extra, stamp=stamps[i]: stream.write(  # noqa: E731
                            {**to_row(job, s), **extra, "scored_by": stamp}
                        )
                        pool.score(round_jobs, write, r.desc, on_bad=on_bad)
    return {"already_scored": already, "scored": len(jobs), "skipped_bad_rows": len(bad), "bad_lines": [e.line for e in bad]}
