"""The batched CPU rollout engine (openrlhf_coherent/devmode/cpu_rollout.py) keeps the one-request engine's
semantics: greedy equals unbatched greedy token for token, EOS kept with "stop" ("length"
otherwise) per request, log-probs of the processed distribution, seeds that reproduce, and an
event loop that keeps running while a batch generates. Requests go in the way OpenRLHF's executor
sends them: many `generate` coroutines at once on one event loop."""

import asyncio
import math

import pytest
import torch

from openrlhf_coherent import devmode

devmode.install_import_stand_ins()

PROMPTS = [
    "user : what is the color of the sun ? assistant :",
    "user : say hello assistant :",
    "user : name a big river assistant :",
    "user : how many legs has a dog ? tell me a short story about a cat assistant :",
    "hi",
]


@pytest.fixture(scope="module")
def model_path(tmp_path_factory):
    from openrlhf_coherent.devmode.tiny_models import make_tiny_llama

    return make_tiny_llama(str(tmp_path_factory.mktemp("engine") / "llama"), seed=3)


def make_engine(path, seed=0):
    from openrlhf_coherent.devmode.cpu_rollout import CpuRolloutEngine

    return CpuRolloutEngine(path, seed=seed)


@pytest.fixture(scope="module")
def engine(model_path):
    return make_engine(model_path)


def ids(engine, text):
    return engine.tokenizer(text, add_special_tokens=False)["input_ids"]


def params(**kw):
    from vllm import SamplingParams

    return SamplingParams(**kw)


def run_together(engine, requests):
    """[(prompt_ids, SamplingParams)] sent at once, as OpenRLHF's executor does; their outputs."""

    async def main():
        return await asyncio.gather(*(engine.generate(p, sp) for p, sp in requests))

    return [r.outputs for r in asyncio.run(main())]


def count_generate_calls(engine, monkeypatch):
    calls = []
    original = engine.model.generate

    def spy(*args, **kwargs):
        calls.append(args[0].shape[0])
        return original(*args, **kwargs)

    monkeypatch.setattr(engine.model, "generate", spy)
    return calls


def test_greedy_batch_equals_unbatched_hf_greedy(engine, monkeypatch):
    calls = count_generate_calls(engine, monkeypatch)
    prompts = [ids(engine, p) for p in PROMPTS]
    outs = run_together(engine, [(p, params(temperature=0.0, max_tokens=12, min_tokens=0)) for p in prompts])
    assert calls == [len(prompts)], "requests that arrive together must share one generate call"
    for prompt, (out,) in zip(prompts, outs):
        assert out.token_ids == _plain_greedy(engine, prompt, 12)


def _plain_greedy(engine, prompt, max_tokens):
    """One prompt at a time, by hand: argmax of the full forward pass, no cache, no padding."""
    tokens = list(prompt)
    for _ in range(max_tokens):
        with torch.no_grad():
            logits = engine.model(torch.tensor([tokens])).logits[0, -1]
        tokens.append(int(logits.argmax()))
        if tokens[-1] in engine.eos_token_ids:
            break
    return tokens[len(prompt) :]


def test_each_request_keeps_its_max_tokens_and_eos(engine, monkeypatch):
    prompts = [ids(engine, p) for p in PROMPTS[:3]]
    greedy = [o[0].token_ids for o in run_together(engine, [(p, params(temperature=0.0, max_tokens=8, min_tokens=0)) for p in prompts])]
    # Make the 3rd greedy token of prompt 0 an EOS: that row stops there with "stop", keeping it;
    # the other rows, in the same batch, run to their own max_tokens (3, 5, 8).
    stop_token = greedy[0][2]
    monkeypatch.setattr(engine, "eos_token_ids", [stop_token])
    outs = run_together(engine, [(p, params(temperature=0.0, max_tokens=m, min_tokens=0)) for p, m in zip(prompts, (8, 5, 3))])
    first = outs[0][0]
    assert first.finish_reason == "stop" and first.token_ids == greedy[0][: greedy[0].index(stop_token) + 1]
    for (out,), m, g in zip(outs[1:], (5, 3), greedy[1:]):
        if stop_token in g[:m]:
            assert out.finish_reason == "stop" and out.token_ids == g[: g.index(stop_token) + 1]
        else:
            assert out.finish_reason == "length" and out.token_ids == g[:m]


def test_logprobs_are_the_processed_distribution(engine):
    """Temperature 0.7 and top-k 5: each reported log-prob is log-softmax(top5(logits / 0.7)) of the
    sampled token, recomputed from a plain forward pass; every sampled token is in the top 5."""
    prompts = [ids(engine, p) for p in PROMPTS]
    sp = params(temperature=0.7, top_k=5, top_p=1.0, max_tokens=6, min_tokens=0, logprobs=1)
    for prompt, (out,) in zip(prompts, run_together(engine, [(p, sp) for p in prompts])):
        with torch.no_grad():
            logits = engine.model(torch.tensor([prompt + out.token_ids])).logits[0, len(prompt) - 1 : -1] / 0.7
        top = logits.topk(5, dim=-1)
        filtered = torch.full_like(logits, -math.inf).scatter(-1, top.indices, top.values)
        expected = torch.log_softmax(filtered, dim=-1).gather(-1, torch.tensor(out.token_ids)[:, None])[:, 0]
        reported = torch.tensor([step[tok].logprob for step, tok in zip(out.logprobs, out.token_ids)])
        assert torch.isfinite(reported).all()  # every sampled token survived the top-k filter
        torch.testing.assert_close(reported, expected, atol=1e-5, rtol=0)


def test_samples_follow_the_model_distribution(engine):
    """4000 one-token samples of one prompt at temperature 0.2 (the random model is nearly uniform
    at 1): empirical frequencies match softmax(logits / 0.2) on every token with p > 2% (the
    exponential race is an exact sampler)."""
    prompt = ids(engine, PROMPTS[1])
    outs = run_together(engine, [(prompt, params(temperature=0.2, max_tokens=1, min_tokens=0))] * 4000)
    counts = torch.bincount(torch.tensor([o[0].token_ids[0] for o in outs]), minlength=engine.model.config.vocab_size)
    with torch.no_grad():
        p = torch.softmax(engine.model(torch.tensor([prompt])).logits[0, -1].float() / 0.2, dim=-1)
    frequent = p > 0.02
    assert frequent.sum() >= 2
    sd = torch.sqrt(p * (1 - p) / 4000)
    assert torch.all((counts.float() / 4000 - p).abs()[frequent] < 5 * sd[frequent])


def test_fixed_seed_reproduces_whatever_the_batch(model_path):
    """Same seed: the same samples per prompt, whether the requests come together or one by one
    and in any order; another seed gives other samples."""
    sp = params(temperature=1.0, max_tokens=8, min_tokens=0)
    engine_a, engine_b, engine_c = make_engine(model_path, 7), make_engine(model_path, 7), make_engine(model_path, 8)
    prompts = [ids(engine_a, p) for p in PROMPTS] * 2  # each prompt twice: its 1st and 2nd sample differ
    together = [o[0].token_ids for o in run_together(engine_a, [(p, sp) for p in prompts])]
    one_by_one = {}
    for i in reversed(range(len(prompts))):  # reversed arrival, batches of one
        one_by_one[i] = run_together(engine_b, [(prompts[i], sp)])[0][0].token_ids
    # The k-th sample of a prompt is reproduced; reversed order swaps which copy is "first".
    n = len(PROMPTS)
    for i in range(n):
        assert {tuple(together[i]), tuple(together[i + n])} == {tuple(one_by_one[i]), tuple(one_by_one[i + n])}
    other = [o[0].token_ids for o in run_together(engine_c, [(p, sp) for p in prompts])]
    assert other != together


def test_n_samples_per_request(engine):
    sp = params(temperature=1.0, max_tokens=5, min_tokens=0)
    sp.n = 3
    (outs,) = run_together(engine, [(ids(engine, PROMPTS[0]), sp)])
    assert len(outs) == 3 and all(1 <= len(o.token_ids) <= 5 for o in outs)


def test_generation_runs_off_the_event_loop(engine, monkeypatch):
    """While a batch generates, the loop keeps running other coroutines and accepts new requests
    (they form the next batch)."""
    calls = count_generate_calls(engine, monkeypatch)
    prompt = ids(engine, PROMPTS[3])
    sp = params(temperature=0.0, max_tokens=64, min_tokens=0)
    ticks = []

    async def main():
        first = asyncio.create_task(engine.generate(prompt, sp))
        while not calls:  # wait until the first batch is generating
            await asyncio.sleep(0.001)
        late = asyncio.create_task(engine.generate(prompt, sp))
        while not first.done():
            ticks.append(len(calls))
            await asyncio.sleep(0.001)
        return await first, await late

    first, late = asyncio.run(main())
    assert len(ticks) > 1, "the event loop was blocked while the batch generated"
    assert calls == [1, 1] and first.outputs[0].token_ids == late.outputs[0].token_ids


def test_a_dispatch_is_one_batch_whatever_the_arrival_timing(engine, monkeypatch):
    """Inside the driver's dispatch bracket the batch is exactly the announced requests, however
    late some arrive (here after 10x the settle window), and the rows' order in it does not depend
    on the arrival order: the same outputs either way."""
    from openrlhf_coherent.devmode import cpu_rollout

    calls = count_generate_calls(engine, monkeypatch)
    sp = params(temperature=1.0, max_tokens=6, min_tokens=0)
    prompts = [ids(engine, p) for p in PROMPTS]

    async def dispatch(order):
        engine._prompt_counts.clear()  # each prompt's first sample: the same seeds both times
        await engine.open_dispatch()
        tasks = []
        for k, i in enumerate(order):
            if k == 2:  # a straggler wave, long after the settle window
                await asyncio.sleep(10 * cpu_rollout.SETTLE_S)
            tasks.append(asyncio.create_task(engine.generate(prompts[i], sp)))
        await engine.close_dispatch(len(order))
        outs = await asyncio.gather(*tasks)
        return {i: out.outputs[0].token_ids for i, out in zip(order, outs)}

    forward = asyncio.run(dispatch(list(range(len(prompts)))))
    backward = asyncio.run(dispatch(list(reversed(range(len(prompts))))))
    assert calls == [len(prompts), len(prompts)]
    assert forward == backward
