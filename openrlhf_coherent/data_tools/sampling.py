"""Sampling R distinct responses per prompt for bootstrap-pairs (SeRA 3.3).

HF `generate` is the path that runs (and is tested) on CPU. The vLLM path is used when a real
vLLM is importable and CUDA is available; it is UNVERIFIED here (no GPU, no vLLM in this
environment): it follows vLLM's documented `LLM.generate` API and nothing else.

Each prompt is sampled with its own seed (run seed + input line number), so a prompt's samples do
not depend on which actor drew it or on what ran before: a resumed run reproduces them.
"""

from __future__ import annotations

from typing import List, Optional, Sequence

import torch

Sample = List[int]  # response token ids, cut after the first EOS


def _cut(ids: Sequence[int], eos_ids: Sequence[int]) -> Sample:
    out = []
    for t in ids:
        out.append(int(t))
        if t in eos_ids:
            break
    return out


def _add_distinct(found: List[Sample], candidates: Sequence[Sample], n: int) -> None:
    for c in candidates:
        if len(found) < n and c and c not in found:
            found.append(c)


def hf_sample(model, prompt_ids: List[int], *, n, max_new_tokens, temperature, top_p, seed, rounds, eos_ids) -> List[Sample]:
    """Up to `n` distinct samples, drawing `n` at a time for at most `rounds` rounds."""
    device = next(model.parameters()).device
    torch.manual_seed(seed)
    found: List[Sample] = []
    for _ in range(rounds):
        out = model.generate(
            input_ids=torch.tensor([prompt_ids], device=device),
            attention_mask=torch.ones((1, len(prompt_ids)), dtype=torch.long, device=device),
            do_sample=True,
            temperature=temperature,
            top_p=top_p,
            top_k=0,  # plain temperature sampling, as in vLLM's defaults
            max_new_tokens=max_new_tokens,
            num_return_sequences=n,
            eos_token_id=list(eos_ids),
            pad_token_id=model.config.pad_token_id if model.config.pad_token_id is not None else eos_ids[0],
        )
        _add_distinct(found, [_cut(row[len(prompt_ids) :].tolist(), eos_ids) for row in out], n)
        if len(found) == n:
            break
    return found


def real_vllm_available() -> bool:
    """True when vLLM itself (not openrlhf_coherent's import stand-in) is installed and CUDA is up."""
    if not torch.cuda.is_available():
        return False
    try:
        import vllm
    except ImportError:
        return False
    return hasattr(vllm, "LLM")  # the stand-in raises AttributeError for anything but SamplingParams


class VllmSampler:
    """UNVERIFIED (needs a GPU and vLLM): one vLLM engine per evaluator actor."""

    def __init__(self, path: str, *, trust_remote_code: bool, gpu_memory_utilization: float, max_model_len: Optional[int]):
        import vllm

        # The actor's HF scoring models share the GPU: vLLM gets only the fraction it is given.
        self.llm = vllm.LLM(
            model=path,
            trust_remote_code=trust_remote_code,
            gpu_memory_utilization=gpu_memory_utilization,
            max_model_len=max_model_len,
        )

    def sample(self, prompt_ids: List[int], *, n, max_new_tokens, temperature, top_p, seed, rounds, eos_ids) -> List[Sample]:
        from vllm import SamplingParams
        from vllm.inputs import TokensPrompt

        found: List[Sample] = []
        for r in range(rounds):
            params = SamplingParams(n=n, temperature=temperature, top_p=top_p, max_tokens=max_new_tokens, seed=seed + r)
            (out,) = self.llm.generate([TokensPrompt(prompt_token_ids=prompt_ids)], params, use_tqdm=False)
            _add_distinct(found, [_cut(c.token_ids, eos_ids) for c in out.outputs], n)
            if len(found) == n:
                break
        return found
