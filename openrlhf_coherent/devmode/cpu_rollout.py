"""A CPU rollout engine that stands in for OpenRLHF's vLLM `RolloutRayActor` (dev mode only).

OpenRLHF 0.11.2 generates rollouts only through vLLM engines. On a machine without CUDA,
`openrlhf_coherent.devmode.apply()` puts `CpuRolloutActor` where `create_vllm_engines` looks
up `RolloutRayActor`, so engine placement, prompt dispatch and OpenRLHF's own agent/reward-func
executors run unchanged; only the token generation underneath is Hugging Face `generate`.

`CpuRolloutEngine` subclasses OpenRLHF's (undecorated) `RolloutRayActor` and inherits
`generate_responses` (the fan-out to the executor) as is. It overrides every method that
touches vLLM: `__init__` loads an fp32 HF model, `generate` returns an object shaped like
vLLM's `RequestOutput`, and the weight-sync / sleep / cache methods become no-ops. Weights
arrive through `load_weights` (a state dict via the Ray object store, see
`devmode._broadcast_to_cpu_engines`).

Batching, the way vLLM does it: OpenRLHF sends every prompt of a rollout batch at once and its
executor awaits one `generate` per sample. Each call only queues its request; a batcher task
runs one left-padded `generate` per group of requests with the same sampling parameters, in a
worker thread so the event loop keeps accepting requests while a batch runs. Within a group
every request keeps its own `max_tokens` (a per-row stopping criterion) and `n`.

Which requests share a batch never depends on timing, so one command repeats bit for bit on one
machine (a row's floating-point sums depend on its batch's width and size). The driver brackets
each dispatch (`deterministic_dispatch`): it opens a dispatch on every engine, sends the prompts,
then tells each engine how many samples it was sent; the engine's batcher waits for exactly
those and runs them as one batch, rows sorted by (prompt length, prompt, seed). OpenRLHF's
collection loop takes each prompt's samples as Ray hands them over (`ray.wait`), in an order that
changes run to run; `dispatch_ordered` restores the dispatch order. Requests outside a dispatch
(the later turns of a multi-turn agent) are batched by arrival: those that arrive within SETTLE_S
of each other.

Sampling does not depend on which requests share a batch: each sample draws its randomness from
its own generator, seeded from (engine seed, prompt token ids, how many times this engine has
seen that prompt), and picks its token with the exponential-race (Gumbel-max) trick, an exact
draw from the processed distribution, as vLLM's sampler does. So a fixed seed gives the same
samples run to run whatever the arrival order, and greedy decoding is plain argmax.

Why not transformers' own continuous batching (`generate_batch`)? It takes one generation
config for all requests and returns no per-token processed log-probs, both of which OpenRLHF's
executors need per request.
"""

from __future__ import annotations

import asyncio
import functools
import hashlib
import os
from collections import Counter
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from typing import Dict, List, Optional, Sequence

import ray
import torch
from transformers import LogitsProcessor, StoppingCriteria

from openrlhf.trainer.ray import vllm_engine
from openrlhf.trainer.ray.vllm_engine import SingleTurnAgentExecutor, _load_agent_executor

from ..remote_code import trust_remote_code_for

# Requests outside a dispatch that arrive within this long of each other join one batch (seconds):
# Ray delivers the calls of one dispatch loop within a few milliseconds.
SETTLE_S = 0.02
SETTLE_MAX_S = 0.25
# A dispatch whose announced requests stop arriving for this long has lost some (its executor
# raised before calling `generate`): run what came rather than hang the rollout.
DISPATCH_STALL_S = 60.0
# Rows per `generate` call; a rollout batch larger than this runs as several calls.
MAX_BATCH_ROWS = int(os.environ.get("OPENRLHF_COHERENT_CPU_MAX_BATCH_ROWS", "256"))


@dataclass
class Logprob:
    """vLLM's `Logprob`, the one field OpenRLHF's executors read."""

    logprob: float


@dataclass
class CompletionOutput:
    """The fields of vLLM's `CompletionOutput` that OpenRLHF's executors read."""

    token_ids: List[int]
    text: str
    finish_reason: str  # "stop" (EOS sampled) or "length" (max_tokens reached)
    logprobs: Optional[List[Dict[int, Logprob]]] = None


@dataclass
class RequestOutput:
    prompt_token_ids: List[int]
    outputs: List[CompletionOutput] = field(default_factory=list)


@dataclass
class _Row:
    """One sample to generate: a request contributes `n` rows."""

    prompt_token_ids: List[int]
    max_tokens: int
    seed: int


class CpuRolloutEngine(vllm_engine.RolloutRayActor.__ray_actor_class__):
    """`RolloutRayActor` with batched Hugging Face `generate` on CPU instead of a vLLM engine."""

    def __init__(
        self,
        model: str,
        seed: int = 0,
        agent_func_path: Optional[str] = None,
        remote_rm_url: Optional[str] = None,
        **vllm_kwargs,  # vLLM engine options (dtype, max_model_len, ...) have no CPU meaning
    ):
        from transformers import AutoModelForCausalLM, AutoTokenizer

        self.seed = seed
        # Same executor choice as RolloutRayActor.__init__, so reward funcs / agents run unchanged.
        self.executor = (
            _load_agent_executor(agent_func_path) if agent_func_path else SingleTurnAgentExecutor(remote_rm_url)
        )
        # vLLM's engine would trust any custom code in the actor folder; this one only if the user allowed it.
        trust = trust_remote_code_for(model, "CPU rollout engine (--actor.model_name_or_path)")
        self.tokenizer = AutoTokenizer.from_pretrained(model, trust_remote_code=trust)
        # fp32: bf16 matmuls on CPU are slower and only approximate what the bf16 GPU engine does anyway.
        self.model = AutoModelForCausalLM.from_pretrained(model, dtype=torch.float32, trust_remote_code=trust).eval()
        self.eos_token_ids = _eos_token_ids(self.model, self.tokenizer)
        # vLLM applies only the SamplingParams OpenRLHF builds; `generate` would fill unset settings
        # (repetition_penalty, top_k=50, ...) from the checkpoint's generation_config.json. Empty it.
        from transformers import GenerationConfig

        self.model.generation_config = GenerationConfig()
        self.max_model_len = getattr(self.model.config, "max_position_embeddings", None)
        self._prompt_counts: Counter = Counter()  # per prompt: samples drawn so far (seeds the next one)
        self._queue: List[tuple] = []  # (request, future) waiting for the next batch
        # The driver's dispatch bracket (`deterministic_dispatch`): None outside one, -1 while the
        # driver is still sending, then the number of samples it sent to this engine.
        self._dispatch: Optional[int] = None
        self._batcher: Optional[asyncio.Task] = None
        self._worker = ThreadPoolExecutor(max_workers=1, thread_name_prefix="cpu-generate")
        self._num_unfinished = 0

    # ---- generation ---------------------------------------------------------------------------

    async def generate(self, prompt_token_ids, sampling_params, multi_modal_data=None):
        """Queue one request and return its final vLLM-shaped `RequestOutput` once its batch ran."""
        if multi_modal_data:
            raise NotImplementedError("the CPU rollout engine is text-only")
        prompt = list(prompt_token_ids)
        max_tokens = sampling_params.max_tokens
        if max_tokens is None:  # vLLM: up to the context length
            if self.max_model_len is None:
                raise ValueError("max_tokens=None needs the model's max_position_embeddings, which it lacks")
            max_tokens = max(1, self.max_model_len - len(prompt))
        rows = [_Row(prompt, max_tokens, self._next_seed(prompt)) for _ in range(_n(sampling_params))]
        future = asyncio.get_running_loop().create_future()
        self._queue.append(((prompt, sampling_params, rows), future))
        self._num_unfinished += 1
        if self._batcher is None or self._batcher.done():
            self._batcher = asyncio.create_task(self._run_batches())
        try:
            return await future
        finally:
            self._num_unfinished -= 1

    def _next_seed(self, prompt: Sequence[int]) -> int:
        """A sample's own seed: the same prompt's k-th sample always gets the same one."""
        key = tuple(prompt)
        occurrence = self._prompt_counts[key]
        self._prompt_counts[key] += 1
        digest = hashlib.sha256(f"{self.seed}|{occurrence}|{','.join(map(str, key))}".encode()).digest()
        return int.from_bytes(digest[:8], "little") & ((1 << 63) - 1)

    # ---- the driver's dispatch bracket (see the module docstring) ------------------------------

    async def open_dispatch(self) -> None:
        self._dispatch = -1

    async def close_dispatch(self, samples: int) -> None:
        self._dispatch = samples or None
        if samples and (self._batcher is None or self._batcher.done()):
            self._batcher = asyncio.create_task(self._run_batches())

    async def _next_batch(self) -> List[tuple]:
        """The queued requests of the open dispatch once all have come, else those that settled."""
        loop = asyncio.get_running_loop()
        if self._dispatch is None:
            await _settle(self._queue)
            batch, self._queue = self._queue, []
            return batch
        seen, last_arrival = len(self._queue), loop.time()
        while self._dispatch == -1 or len(self._queue) < self._dispatch:
            await asyncio.sleep(0.002)
            if len(self._queue) != seen:
                seen, last_arrival = len(self._queue), loop.time()
            elif self._dispatch != -1 and loop.time() - last_arrival > DISPATCH_STALL_S:
                break
        size = min(self._dispatch, len(self._queue)) if self._dispatch != -1 else len(self._queue)
        batch, self._queue = self._queue[:size], self._queue[size:]
        self._dispatch = None
        return batch

    async def _run_batches(self) -> None:
        loop = asyncio.get_running_loop()
        while self._queue or (self._dispatch is not None and self._dispatch > 0):
            batch = await self._next_batch()
            groups: Dict[tuple, list] = {}
            for request, future in batch:
                groups.setdefault(_group_key(request[1]), []).append((request, future))
            for members in groups.values():
                requests = [request for request, _ in members]
                try:
                    outputs = await loop.run_in_executor(self._worker, self._generate_group, requests)
                except Exception as e:  # every waiting request sees the failure, none hangs
                    for _, future in members:
                        if not future.done():
                            future.set_exception(e)
                    continue
                for (_, future), output in zip(members, outputs):
                    if not future.done():
                        future.set_result(output)

    @torch.no_grad()
    def _generate_group(self, requests: List[tuple]) -> List[RequestOutput]:
        """Generate every row of requests that share sampling parameters (in the worker thread)."""
        params = requests[0][1]
        rows = [row for _, _, request_rows in requests for row in request_rows]
        # Similar lengths together (less left padding when a group spans several calls); prompt and
        # seed break ties, so the rows' order never depends on the order requests arrived in.
        order = sorted(range(len(rows)), key=lambda i: (len(rows[i].prompt_token_ids), rows[i].prompt_token_ids, rows[i].seed))
        results: List[Optional[CompletionOutput]] = [None] * len(rows)
        for start in range(0, len(order), MAX_BATCH_ROWS):
            chunk = order[start : start + MAX_BATCH_ROWS]
            for i, output in zip(chunk, self._generate_rows([rows[i] for i in chunk], params)):
                results[i] = output
        outputs, next_row = [], 0
        for prompt, _, request_rows in requests:
            outputs.append(RequestOutput(prompt, results[next_row : next_row + len(request_rows)]))
            next_row += len(request_rows)
        return outputs

    def _generate_rows(self, rows: List[_Row], params) -> List[CompletionOutput]:
        from transformers import GenerationConfig, LogitsProcessorList, StoppingCriteriaList

        pad_id = self.tokenizer.pad_token_id
        pad_id = self.eos_token_ids[0] if pad_id is None else pad_id
        eos_ids = self.eos_token_ids + [t for t in (getattr(params, "stop_token_ids", None) or []) if t not in self.eos_token_ids]
        width = max(len(row.prompt_token_ids) for row in rows)
        # Left padding: every row's next token sits in the last column.
        input_ids = torch.full((len(rows), width), pad_id, dtype=torch.long)
        attention_mask = torch.zeros((len(rows), width), dtype=torch.long)
        for i, row in enumerate(rows):
            input_ids[i, width - len(row.prompt_token_ids) :] = torch.tensor(row.prompt_token_ids)
            attention_mask[i, width - len(row.prompt_token_ids) :] = 1
        max_tokens = torch.tensor([row.max_tokens for row in rows])

        recorder = _ProcessedLogProbs() if params.logprobs is not None else None
        processors = LogitsProcessorList(_processors(params, width, eos_ids, recorder, [row.seed for row in rows]))
        config = GenerationConfig(
            do_sample=False,  # the token choice is made by _ExponentialRace (or argmax when greedy)
            max_new_tokens=int(max_tokens.max()),
            eos_token_id=eos_ids,
            pad_token_id=pad_id,
            return_dict_in_generate=True,
        )
        out = self.model.generate(
            input_ids,
            attention_mask=attention_mask,
            generation_config=config,
            logits_processor=processors,
            stopping_criteria=StoppingCriteriaList([_RowMaxTokens(width, max_tokens)]),
        )
        new_tokens = out.sequences[:, width:]
        step_logprobs = recorder.finish(new_tokens) if recorder else None

        outputs = []
        for i, row in enumerate(rows):
            token_ids = new_tokens[i, : row.max_tokens].tolist()
            stop_at = next((k for k, t in enumerate(token_ids) if t in eos_ids), None)
            # vLLM keeps the EOS in token_ids and reports "stop"; OpenRLHF puts the reward on that token.
            if stop_at is not None:
                token_ids, finish_reason = token_ids[: stop_at + 1], "stop"
            else:
                finish_reason = "length"
            logprobs = (
                [{tok: Logprob(step_logprobs[i, k].item())} for k, tok in enumerate(token_ids)]
                if step_logprobs is not None
                else None
            )
            text = self.tokenizer.decode(token_ids, skip_special_tokens=params.skip_special_tokens)
            outputs.append(CompletionOutput(token_ids, text, finish_reason, logprobs))
        return outputs

    def get_num_unfinished_requests(self) -> int:
        return self._num_unfinished

    # ---- weight sync: a state dict through the Ray object store --------------------------------

    def load_weights(self, state_dict: Dict[str, torch.Tensor]) -> None:
        """Load the policy's (gathered) parameters; keys are the HF model's parameter names."""
        result = self.model.load_state_dict(
            {name: tensor.to(torch.float32) for name, tensor in state_dict.items()}, strict=False
        )
        if result.unexpected_keys:
            raise KeyError(f"CPU rollout engine got unknown parameters: {result.unexpected_keys[:5]}")

    # ---- vLLM engine controls with no CPU counterpart --------------------------------------------

    async def init_process_group(self, *args, **kwargs):
        pass  # no NCCL group: weights come through load_weights

    async def update_weight(self, *args, **kwargs):
        raise NotImplementedError("CPU dev mode syncs weights with load_weights (object store), not NCCL")

    async def update_weight_cuda_ipc(self, *args, **kwargs):
        raise NotImplementedError("CPU dev mode syncs weights with load_weights (object store), not CUDA IPC")

    async def reset_prefix_cache(self):
        pass  # HF generate keeps no cache between requests

    async def pause_generation(self):
        pass

    async def resume_generation(self):
        pass

    async def sleep(self, level=1):
        pass  # nothing to free: no KV-cache pool

    async def wake_up(self, tags=None):
        pass


CpuRolloutActor = ray.remote(CpuRolloutEngine)


class _CountingEngine:
    """An engine handle that counts the samples OpenRLHF's dispatch sends through it."""

    def __init__(self, handle):
        self.handle = handle
        self.samples = 0
        self.generate_responses = self  # OpenRLHF calls `engine.generate_responses.remote(...)`

    def remote(self, **kwargs):
        self.samples += int(kwargs.get("num_samples", 1))
        return self.handle.generate_responses.remote(**kwargs)

    def __getattr__(self, name):
        return getattr(self.handle, name)


def deterministic_dispatch(dispatch):
    """Wrap `SamplesGenerator._dispatch_prompts_to_vllm`: the driver's side of the dispatch bracket
    (module docstring), so the engines batch by dispatch; it also records the prompts' order."""

    @functools.wraps(dispatch)
    def bracketed(self, prompts, labels, **kwargs):
        engines = self.vllm_engines
        ray.get([engine.open_dispatch.remote() for engine in engines])
        counting = [_CountingEngine(engine) for engine in engines]
        self.vllm_engines = counting
        try:
            refs = dispatch(self, prompts, labels, **kwargs)
        finally:
            self.vllm_engines = engines
            ray.get([c.handle.close_dispatch.remote(c.samples) for c in counting])
        self.coherent_dispatched = getattr(self, "coherent_dispatched", []) + list(prompts)
        return refs

    return bracketed


def dispatch_ordered(generate):
    """Wrap `SamplesGenerator._generate_vllm`, which collects each prompt's samples as its Ray
    object becomes ready (`ray.wait`, whose pick among ready objects follows their random ids):
    put the prompts' groups back in dispatch order (duplicates of one prompt by their tokens)."""

    @functools.wraps(generate)
    def ordered(self, *args, **kwargs):
        self.coherent_dispatched = []
        experiences, consumed, exhausted = generate(self, *args, **kwargs)
        n = kwargs.get("n_samples_per_prompt", self.args.rollout.n_samples_per_prompt)
        groups = [experiences[i : i + n] for i in range(0, len(experiences), n)]
        position = {}
        for i, prompt in enumerate(self.coherent_dispatched):
            position.setdefault(prompt, i)
        # One prompt per group of n, every prompt dispatched here: else (an agent's own layout) as is.
        if all(len(g) == n and len({e.prompts[0] for e in g}) == 1 and g[0].prompts[0] in position for g in groups):
            groups.sort(key=lambda g: (position[g[0].prompts[0]], [e.sequences.tolist() for e in g]))
            experiences = [e for g in groups for e in g]
        return experiences, consumed, exhausted

    return ordered


# ---- batching -----------------------------------------------------------------------------------


async def _settle(queue: list) -> None:
    """Wait until no request has arrived for SETTLE_S (at most SETTLE_MAX_S)."""
    loop = asyncio.get_running_loop()
    deadline = loop.time() + SETTLE_MAX_S
    seen = -1
    while len(queue) != seen and loop.time() < deadline:
        seen = len(queue)
        await asyncio.sleep(SETTLE_S)


def _n(params) -> int:
    return int(getattr(params, "n", 1) or 1)


def _group_key(params) -> tuple:
    """Requests batch together iff every sampling setting but max_tokens (handled per row) matches."""
    return (
        float(params.temperature),
        float(params.top_p),
        int(params.top_k),
        int(params.min_tokens or 0),
        params.logprobs,
        bool(params.skip_special_tokens),
        tuple(getattr(params, "stop_token_ids", None) or ()),
    )


# ---- the processed distribution and the token choice ---------------------------------------------


def _processors(params, prompt_width: int, eos_ids: List[int], recorder, seeds: List[int]) -> list:
    """Logits processors in HF's order (min-new-tokens, temperature, top-k, top-p), then the
    log-prob recorder and the sampler. vLLM: temperature 0 is greedy, top_k <= 0 and top_p 1 are off."""
    from transformers import (
        MinNewTokensLengthLogitsProcessor,
        TemperatureLogitsWarper,
        TopKLogitsWarper,
        TopPLogitsWarper,
    )

    processors = []
    if params.min_tokens:
        processors.append(MinNewTokensLengthLogitsProcessor(prompt_width, params.min_tokens, eos_ids))
    greedy = params.temperature <= 0
    if not greedy:
        if params.temperature != 1.0:
            processors.append(TemperatureLogitsWarper(params.temperature))
        if params.top_k > 0:
            processors.append(TopKLogitsWarper(params.top_k))
        if params.top_p < 1.0:
            processors.append(TopPLogitsWarper(params.top_p))
    if recorder is not None:
        processors.append(recorder)
    if not greedy:
        processors.append(_ExponentialRace(seeds))
    return processors


class _ProcessedLogProbs(LogitsProcessor):
    """Records log-softmax of the processed logits at each step and, once the next token is known,
    keeps only that token's value (the full-vocabulary rows of every step would not fit)."""

    def __init__(self):
        self._chosen: List[torch.Tensor] = []  # per step: (batch,) log-prob of the chosen token
        self._pending: Optional[torch.Tensor] = None  # (batch, vocab) of the step being decided

    def __call__(self, input_ids: torch.LongTensor, scores: torch.FloatTensor) -> torch.FloatTensor:
        if self._pending is not None:
            self._keep(input_ids[:, -1])
        self._pending = torch.log_softmax(scores.float(), dim=-1)
        return scores

    def _keep(self, tokens: torch.Tensor) -> None:
        self._chosen.append(self._pending.gather(-1, tokens[:, None]).squeeze(-1))
        self._pending = None

    def finish(self, new_tokens: torch.Tensor) -> torch.Tensor:
        """(batch, steps) log-probs of `new_tokens` (the generated columns)."""
        if self._pending is not None:
            self._keep(new_tokens[:, len(self._chosen)])
        return torch.stack(self._chosen, dim=1)


class _ExponentialRace(LogitsProcessor):
    """Sample by the exponential race: argmax(log p - log E), E ~ Exp(1) per token, is an exact draw
    from p. Each row's E comes from its own generator, so a sample does not depend on its batch;
    `generate` (do_sample=False) then takes the argmax."""

    def __init__(self, seeds: List[int]):
        self._generators = [torch.Generator().manual_seed(seed) for seed in seeds]

    def __call__(self, input_ids: torch.LongTensor, scores: torch.FloatTensor) -> torch.FloatTensor:
        noise = torch.empty_like(scores, dtype=torch.float32)
        for row, generator in zip(noise, self._generators):
            row.exponential_(generator=generator)
        return torch.log_softmax(scores.float(), dim=-1) - noise.log()


class _RowMaxTokens(StoppingCriteria):
    """Stopping criterion: each row stops after its own request's max_tokens."""

    def __init__(self, prompt_width: int, max_tokens: torch.Tensor):
        self.prompt_width = prompt_width
        self.max_tokens = max_tokens

    def __call__(self, input_ids: torch.LongTensor, scores, **kwargs) -> torch.BoolTensor:
        return (input_ids.shape[1] - self.prompt_width) >= self.max_tokens


def _eos_token_ids(model, tokenizer) -> List[int]:
    """EOS ids as vLLM collects them: the generation config's (int or list) plus the tokenizer's."""
    ids = model.generation_config.eos_token_id
    ids = [] if ids is None else [ids] if isinstance(ids, int) else list(ids)
    if tokenizer.eos_token_id is not None and tokenizer.eos_token_id not in ids:
        ids.append(tokenizer.eos_token_id)
    return ids
