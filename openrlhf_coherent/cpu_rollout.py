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
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Dict, List, Optional

import ray
import torch

from openrlhf.trainer.ray import vllm_engine
from openrlhf.trainer.ray.vllm_engine import SingleTurnAgentExecutor, _load_agent_executor


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


class CpuRolloutEngine(vllm_engine.RolloutRayActor.__ray_actor_class__):
    """`RolloutRayActor` with Hugging Face `generate` on CPU instead of a vLLM engine."""

    def __init__(
        self,
        model: str,
        seed: int = 0,
        agent_func_path: Optional[str] = None,
        remote_rm_url: Optional[str] = None,
        **vllm_kwargs,  # vLLM engine options (dtype, max_model_len, ...) have no CPU meaning
    ):
        from transformers import AutoModelForCausalLM, AutoTokenizer

        torch.manual_seed(seed)
        # Same executor choice as RolloutRayActor.__init__, so reward funcs / agents run unchanged.
        self.executor = (
            _load_agent_executor(agent_func_path) if agent_func_path else SingleTurnAgentExecutor(remote_rm_url)
        )
        self.tokenizer = AutoTokenizer.from_pretrained(model, trust_remote_code=True)
        # fp32: bf16 matmuls on CPU are slower and only approximate what the bf16 GPU engine does anyway.
        self.model = AutoModelForCausalLM.from_pretrained(model, dtype=torch.float32, trust_remote_code=True).eval()
        self.eos_token_ids = _eos_token_ids(self.model, self.tokenizer)
        self._num_unfinished = 0

    # ---- generation ---------------------------------------------------------------------------

    async def generate(self, prompt_token_ids, sampling_params, multi_modal_data=None):
        """One sample for one prompt, shaped like vLLM's final `RequestOutput`."""
        if multi_modal_data:
            raise NotImplementedError("the CPU rollout engine is text-only")
        self._num_unfinished += 1
        try:
            return self._generate(list(prompt_token_ids), sampling_params)
        finally:
            self._num_unfinished -= 1

    @torch.no_grad()
    def _generate(self, prompt_token_ids: List[int], params) -> RequestOutput:
        from transformers import GenerationConfig

        want_logprobs = params.logprobs is not None
        config = GenerationConfig(
            do_sample=params.temperature > 0,  # vLLM: temperature 0 means greedy
            temperature=params.temperature if params.temperature > 0 else None,
            top_p=params.top_p,
            # vLLM: top_k <= 0 disables it. HF needs an explicit 0: an unset top_k means 50.
            top_k=max(params.top_k, 0),
            max_new_tokens=params.max_tokens,
            min_new_tokens=params.min_tokens or None,
            eos_token_id=self.eos_token_ids,
            pad_token_id=self.tokenizer.pad_token_id,
            return_dict_in_generate=True,
            output_scores=want_logprobs,
        )
        input_ids = torch.tensor([prompt_token_ids], dtype=torch.long)
        out = self.model.generate(input_ids, attention_mask=torch.ones_like(input_ids), generation_config=config)
        token_ids = out.sequences[0, len(prompt_token_ids) :].tolist()
        # vLLM keeps the EOS in token_ids and reports "stop"; OpenRLHF puts the reward on that token.
        finish_reason = "stop" if token_ids and token_ids[-1] in self.eos_token_ids else "length"
        logprobs = _sampled_logprobs(out.scores, token_ids) if want_logprobs else None
        text = self.tokenizer.decode(token_ids, skip_special_tokens=params.skip_special_tokens)
        return RequestOutput(prompt_token_ids, [CompletionOutput(token_ids, text, finish_reason, logprobs)])

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


def _eos_token_ids(model, tokenizer) -> List[int]:
    """EOS ids as vLLM collects them: the generation config's (int or list) plus the tokenizer's."""
    ids = model.generation_config.eos_token_id
    ids = [] if ids is None else [ids] if isinstance(ids, int) else list(ids)
    if tokenizer.eos_token_id is not None and tokenizer.eos_token_id not in ids:
        ids.append(tokenizer.eos_token_id)
    return ids


def _sampled_logprobs(scores, token_ids: List[int]) -> List[Dict[int, Logprob]]:
    """Log-probs of the sampled tokens under the processed distribution.

    `generate`'s scores are the logits after temperature / top-k / top-p, which is what vLLM
    returns with `logprobs_mode="processed_logprobs"` (the mode OpenRLHF asks for).
    """
    return [
        {tok: Logprob(torch.log_softmax(step_scores[0].float(), dim=-1)[tok].item())}
        for step_scores, tok in zip(scores, token_ids)
    ]
