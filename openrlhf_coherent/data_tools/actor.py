"""The evaluator's Ray actor: scores log p_num(y|x) - log p_den(y|x) with two models it holds.

The same computation serves both rewards the tools use, with different models:
  coherent reward (SRPPO):        numerator = SFT model,    denominator = pretrained base
  implicit reward (SeRA, DPO):    numerator = policy model, denominator = reference model
It can also hold a sampler (the policy, for bootstrap-pairs); when the sampler is the numerator
model, the weights are shared rather than loaded twice.

With an `ensemble` model (a third, older policy) the reward is SeRA's eq. 7 round reward,
  r = (1 - gamma) * log(pi_num / pi_den) + gamma * log(pi_den / pi_ensemble),
i.e. numerator = theta_{t-1}, denominator = theta_{t-2}, ensemble = theta_{t-3} (`ensemble_reward`).

Each actor asks for one GPU, so N actors spread over N GPUs on a cluster; on CPU the dev mode
declares fake GPUs and the actors split the cores. Models run in bf16 on CUDA and fp32 on CPU
(CPU bf16 matmuls are slower and no more faithful); log-probs are fp32 either way (scoring.py).
"""

from __future__ import annotations

import functools
from typing import Dict, List, Optional, Sequence, Tuple

import ray
import torch

from openrlhf_coherent.reward import coherent_reward
from openrlhf_coherent.scoring import response_log_probs

from .sampling import VllmSampler, hf_sample, real_vllm_available


def ensemble_reward(recent: torch.Tensor, older: torch.Tensor, gamma: float) -> torch.Tensor:
    """SeRA eq. 7: (1 - gamma) * log(pi_{t-1}/pi_{t-2}) + gamma * log(pi_{t-2}/pi_{t-3}), from the
    two summed implicit rewards. Averaging two rounds' rewards damps a bias one round picked up."""
    return (1 - gamma) * recent + gamma * older


def load_model(path: str, trust_remote_code: bool):
    from transformers import AutoModelForCausalLM

    cuda = torch.cuda.is_available()
    model = AutoModelForCausalLM.from_pretrained(
        path,
        dtype=torch.bfloat16 if cuda else torch.float32,
        use_safetensors=True,  # never unpickle weights (a .bin checkpoint can run code on load)
        trust_remote_code=trust_remote_code,
    )
    return model.to("cuda" if cuda else "cpu").eval()


@ray.remote(num_gpus=1)
class PairScorer:
    def __init__(
        self,
        numerator: str,
        denominator: str,
        *,
        trust_remote_code: bool = False,
        batch_tokens: int = 16384,
        num_threads: Optional[int] = None,
        sampler: Optional[str] = None,
        vllm_gpu_memory_utilization: float = 0.5,
        max_len: Optional[int] = None,
        ensemble: Optional[str] = None,
        ensemble_gamma: float = 0.0,
    ):
        from transformers import AutoTokenizer

        if num_threads and not torch.cuda.is_available():
            torch.set_num_threads(num_threads)  # actors share the CPU cores instead of oversubscribing
        self.batch_tokens = batch_tokens
        tokenizer = AutoTokenizer.from_pretrained(numerator, trust_remote_code=trust_remote_code)
        self.pad_token_id = tokenizer.pad_token_id
        self.eos_ids = [tokenizer.eos_token_id]
        self.numerator = load_model(numerator, trust_remote_code)
        self.denominator = self.numerator if denominator == numerator else load_model(denominator, trust_remote_code)
        loaded = {numerator: self.numerator, denominator: self.denominator}
        self.ensemble = None
        if ensemble is not None:
            self.ensemble = loaded[ensemble] if ensemble in loaded else load_model(ensemble, trust_remote_code)
        self.ensemble_gamma = ensemble_gamma
        self.draw = None  # f(prompt_ids, **sampling kwargs) -> distinct samples
        if sampler is not None and real_vllm_available():
            self.draw = VllmSampler(
                sampler,
                trust_remote_code=trust_remote_code,
                gpu_memory_utilization=vllm_gpu_memory_utilization,
                max_model_len=max_len,
            ).sample
        elif sampler is not None:
            model = self.numerator if sampler == numerator else load_model(sampler, trust_remote_code)
            self.draw = functools.partial(hf_sample, model)

    def score(self, pairs: Sequence[Tuple[List[int], List[int]]]) -> Dict[str, List[float]]:
        """Summed response log-probs under both models, and their difference, for each pair.
        NaN/inf are returned as they are: the driver reports them per row, with the line number."""
        kwargs = dict(batch_tokens=self.batch_tokens, pad_token_id=self.pad_token_id)
        num = response_log_probs(self.numerator, pairs, **kwargs)
        den = num if self.denominator is self.numerator else response_log_probs(self.denominator, pairs, **kwargs)
        pad = torch.nn.utils.rnn.pad_sequence
        mask = pad([torch.ones(len(x), dtype=torch.bool) for x in num], batch_first=True)
        r = coherent_reward(pad(num, batch_first=True), pad(den, batch_first=True), mask, check_finite=False)
        out = {
            "reward": r.reward.tolist(),
            "numerator_logp": r.sft_log_prob.tolist(),
            "denominator_logp": r.base_log_prob.tolist(),
            "length": r.length.int().tolist(),
        }
        if self.ensemble is not None:
            ens = response_log_probs(self.ensemble, pairs, **kwargs)
            older = coherent_reward(pad(den, batch_first=True), pad(ens, batch_first=True), mask, check_finite=False)
            out["reward"] = ensemble_reward(r.reward, older.reward, self.ensemble_gamma).tolist()
            out["ensemble_logp"] = older.base_log_prob.tolist()
        return out

    def sample(self, prompts: Sequence[Tuple[int, List[int]]], **kwargs) -> List[List[List[int]]]:
        """Distinct responses for each (seed, prompt_ids); see sampling.hf_sample for kwargs."""
        return [self.draw(prompt_ids, seed=seed, eos_ids=self.eos_ids, **kwargs) for seed, prompt_ids in prompts]
