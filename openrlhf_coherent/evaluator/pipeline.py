"""Input file -> scored, append-only output stream: the loop that score, filter and select-pairs share.

Everything that can be wrong with the flags or the input is found before Ray starts; the
stream is opened first only to learn which lines a previous run already finished.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Callable, Dict, List, Sequence

from openrlhf_coherent.config import ConfigError

from .common import check_args, report_bad_rows
from .output import ScoredStream
from .rows import Job, load_jobs
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


def score_file(
    args,
    output: str,
    make_job: Callable[[int, dict], Job],
    rounds: Sequence[ScoringRound],
    to_row: Callable[[Job, List[dict]], dict],
) -> Dict:
    """Score the rows of args.input not yet in `output`, appending `to_row(job, scores)` for each.
    Returns the summary counts."""
    check_args(args)
    if args.input == output:
        raise ConfigError("--output must differ from --input (the output is appended to)")
    stream = ScoredStream(output)
    already = len(stream.done_lines)
    try:
        jobs, bad = load_jobs(args.input, make_job, args.on_bad_row, skip_lines=stream.done_lines)
        report_bad_rows(bad)
        todo = [(r, [j for j in jobs if r.takes(j)]) for r in rounds]
        todo = [(r, round_jobs) for r, round_jobs in todo if round_jobs]  # no actors for an empty round
        if todo:  # else everything is already scored: no Ray start at all
            with ray_session(args.num_actors):
                for r, round_jobs in todo:
                    with ScorerPool(
                        args.num_actors, r.numerator, r.denominator,
                        batch_tokens=args.batch_tokens, trust_remote_code=args.trust_remote_code, **r.actor_kwargs,
                    ) as pool:  # fmt: skip
                        write = lambda job, s, extra=r.extra: stream.write({**to_row(job, s), **extra})  # noqa: E731
                        pool.score(round_jobs, write, r.desc)
    finally:
        stream.close()
    return {"already_scored": already, "scored": len(jobs), "skipped_bad_rows": len(bad), "bad_lines": [e.line for e in bad]}
