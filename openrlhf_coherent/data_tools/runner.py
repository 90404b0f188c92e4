"""Driver side: Ray start/stop, a pool of `PairScorer` actors, work dispatch and result streaming.

Work is cut on the driver: every pair of every job is sorted by length and grouped into
token-budgeted batches (`scoring.plan_batches`), one batch per actor call, so each call is already
one well-filled forward per model. Each actor keeps two calls in flight (the next batch is
waiting while one runs), and results are handed back as calls finish; a job (row) is done when
all of its pairs are.
"""

from __future__ import annotations

from contextlib import contextmanager
from typing import Callable, Dict, Iterator, List, Optional, Sequence, Tuple

import ray
from tqdm import tqdm

from openrlhf_coherent import devmode
from openrlhf_coherent.scoring import plan_batches

from .actor import PairScorer
from openrlhf_coherent.files import non_finite

from .rows import BadRow, Job

IN_FLIGHT_PER_ACTOR = 2


@contextmanager
def ray_session(num_actors: int):
    """Use the caller's Ray if one is running (a cluster, a notebook, the tests), else start a local
    one (fake GPUs on CPU via the dev mode) and shut down only that one."""
    started = not ray.is_initialized()
    if started:
        ray.init(**devmode.ray_init_kwargs(num_actors, openrlhf_workers=False))
    try:
        yield
    finally:
        if started:
            ray.shutdown()


class ScorerPool:
    """`num_actors` PairScorer actors holding the same (numerator, denominator[, sampler]) models."""

    def __init__(self, num_actors: int, numerator: str, denominator: str, *, batch_tokens: int, **actor_kwargs):
        threads = max(1, devmode.usable_cores() // num_actors)  # only used on CPU
        self.batch_tokens = batch_tokens
        # Which model each score comes from, to name it when its log-probs are not finite.
        self.sources = {"numerator_logp": numerator, "denominator_logp": denominator}
        if actor_kwargs.get("ensemble"):
            self.sources["ensemble_logp"] = actor_kwargs["ensemble"]
        self.actors = [
            PairScorer.remote(numerator, denominator, batch_tokens=batch_tokens, num_threads=threads, **actor_kwargs)
            for _ in range(num_actors)
        ]

    def close(self) -> None:
        for actor in self.actors:
            ray.kill(actor)

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self.close()

    def _run(self, method: str, tasks: Sequence[tuple], **kwargs) -> Iterator[Tuple[int, object]]:
        """Call `actor.method(*task, **kwargs)` for every task, yielding (task index, result) as they finish."""
        queue = list(range(len(tasks)))[::-1]
        running: Dict[ray.ObjectRef, Tuple[int, object]] = {}

        def submit(actor):
            t = queue.pop()
            running[getattr(actor, method).remote(*tasks[t], **kwargs)] = (t, actor)

        for actor in self.actors:
            for _ in range(IN_FLIGHT_PER_ACTOR):
                if queue:
                    submit(actor)
        while running:
            (ref,), _ = ray.wait(list(running), num_returns=1)
            t, actor = running.pop(ref)
            result = ray.get(ref)  # an actor error surfaces here; rows already written stay written
            if queue:
                submit(actor)
            yield t, result

    def non_finite(self, job: Job, scores: List[dict]) -> Optional[BadRow]:
        """A BadRow naming the line and the model when a score of `job` is NaN or infinite."""
        for k, s in enumerate(scores):
            # The models' log-probs first: they name the model to look at.
            items = sorted(s.items(), key=lambda kv: kv[0] not in self.sources)
            bad = non_finite((f"{key} of {self.sources[key]}" if key in self.sources else key, v) for key, v in items)
            if bad:
                which = f"response {k + 1} of {len(scores)}: " if len(scores) > 1 else ""
                return BadRow(job.line, f"{which}non-finite log-probs ({bad}): that model's weights or dtype give NaN/inf")
        return None

    def score(
        self,
        jobs: Sequence[Job],
        on_done: Callable[[Job, List[dict]], None],
        desc: str = "scoring",
        on_bad: Optional[Callable[[BadRow], None]] = None,
    ) -> None:
        """Score every pair of every job; call `on_done(job, [scores per pair])` as each job completes.
        A job with a NaN/inf score goes to `on_bad(BadRow)` instead (default: raise the BadRow)."""
        items = [(j, k) for j, job in enumerate(jobs) for k in range(len(job.pairs))]
        lengths = [sum(map(len, jobs[j].pairs[k])) for j, k in items]
        batches = plan_batches(lengths, self.batch_tokens)
        tasks = [([jobs[items[i][0]].pairs[items[i][1]] for i in batch],) for batch in batches]
        scores: List[List[Optional[dict]]] = [[None] * len(job.pairs) for job in jobs]
        remaining = [len(job.pairs) for job in jobs]
        with tqdm(total=len(jobs), unit="row", desc=desc, dynamic_ncols=True) as bar:
            for t, out in self._run("score", tasks):
                finished = []
                for pos, i in enumerate(batches[t]):
                    j, k = items[i]
                    scores[j][k] = {key: values[pos] for key, values in out.items()}
                    remaining[j] -= 1
                    if remaining[j] == 0:
                        finished.append(j)
                for j in sorted(finished, key=lambda j: jobs[j].line):
                    bad = self.non_finite(jobs[j], scores[j])
                    if bad is None:
                        on_done(jobs[j], scores[j])
                    elif on_bad is None:
                        raise bad
                    else:
                        on_bad(bad)
                bar.update(len(finished))

    def sample(self, requests: Sequence[Tuple[int, List[int]]], chunk: int, **kwargs) -> List[List[List[int]]]:
        """Distinct samples for each (seed, prompt_ids), `chunk` prompts per actor call."""
        tasks = [(requests[i : i + chunk],) for i in range(0, len(requests), chunk)]
        out: List[Optional[List[List[int]]]] = [None] * len(requests)
        with tqdm(total=len(requests), unit="prompt", desc="sampling", dynamic_ncols=True) as bar:
            for t, samples in self._run("sample", tasks, **kwargs):
                out[t * chunk : t * chunk + len(samples)] = samples
                bar.update(len(samples))
        return out
