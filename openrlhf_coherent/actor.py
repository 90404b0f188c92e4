"""The coherent-reward Ray actor: holds the base model (and the SFT model only when needed).

It takes the place of OpenRLHF's `RewardModelActor` in the reward `RayActorGroup` (same
`--reward.num_nodes/num_gpus_per_node`, data-parallel over ranks by `async_run_method_batch`),
and loads each model exactly as OpenRLHF's `ReferenceModelActor` loads the reference model:
OpenRLHF's `Actor` wrapper in a DeepSpeed eval engine, `--ds.param_dtype`, `--ds.attn_implementation`,
`--reward.offload`, packing. Two differences:

- The temperature: the reward is defined on temperature-1 log-probs, whatever
  `--rollout.temperature` is.
- The forward: OpenRLHF's Actor forms fp32 logits for every position and the whole vocabulary;
  a reward needs them only for the response. `scoring.action_log_probs` makes the same model
  call with `logits_to_keep` (the response window), so the LM head and log-softmax skip the
  prompt (equal in fp32; bf16 may round the smaller matmul differently). With ring attention, a
  VLM, or a model without `logits_to_keep`, the actor keeps OpenRLHF's forward.
"""

from __future__ import annotations

from typing import Dict, Optional

import ray
import torch

from openrlhf.models import Actor
from openrlhf.trainer.ray.launcher import BaseModelActor
from openrlhf.utils.deepspeed import DeepspeedStrategy

from . import scoring
from .remote_code import PPO_TRUST_FLAG, refuse_remote_code
from .reward import check_finite_log_probs


@ray.remote(num_gpus=1)
class CoherentRewardActor(BaseModelActor):
    def init_model_from_pretrained(self, strategy: DeepspeedStrategy, pretrain: str = "coherent"):
        # `pretrain` is the literal "coherent" from --reward.model_name_or_path; the model paths
        # live in the plugin's flags, which travel inside strategy.args.
        self._setup_distributed(strategy)
        args = strategy.args
        # name -> (DeepSpeed engine, whether the head runs on response positions only).
        # With reuse, log p_SFT comes from OpenRLHF's reference model: do not hold a second copy.
        self.paths = {"base": args.coherent.base_model, "sft": args.coherent.sft_model}
        self.models = {"base": self._load(args.coherent.base_model)}
        if not args.coherent.reuse_ref_logprobs:
            self.models["sft"] = self._load(args.coherent.sft_model)
        strategy.print(
            f"coherent reward actor: base={args.coherent.base_model} "
            f"sft={args.coherent.sft_model if 'sft' in self.models else '(reference model log-probs reused)'}"
        )

    def _load(self, path: str):
        args = self.strategy.args
        # OpenRLHF's Actor loads with trust_remote_code=True; a folder naming custom code is refused
        # here (as in the driver's validation) unless the user allowed it, so that True is inert.
        refuse_remote_code(path, "coherent reward actor", args.coherent.trust_remote_code, PPO_TRUST_FLAG)
        model = Actor(
            path,
            attn_implementation=args.ds.attn_implementation,
            experts_implementation=args.ds.experts_implementation,
            param_dtype=args.ds.param_dtype,
            load_in_4bit=args.ds.load_in_4bit,
            ds_config=self.strategy.get_ds_eval_config(offload=args.reward.offload),
            packing_samples=args.ds.packing_samples,
            temperature=1.0,  # the coherent reward is defined on untempered log-probs
            use_liger_kernel=args.ds.use_liger_kernel,
        )
        if args.reward.offload:
            model._offload = True
        head_on_responses_only = self._can_skip_prompt_logits(model, path)
        model = self.strategy.prepare(model)
        model.eval()
        return model, head_on_responses_only

    def _can_skip_prompt_logits(self, actor: Actor, path: str) -> bool:
        if self.strategy.ring_attn_group is not None or getattr(actor, "is_vlm", False):
            return False  # ring attention needs OpenRLHF's packed, sliced forward
        if not scoring.accepts_logits_to_keep(actor.model):
            self.strategy.print(f"coherent reward actor: {path}: no logits_to_keep, full logits on every position")
            return False
        return True

    @torch.no_grad()
    def _log_probs(self, name, sequences, action_mask, attention_mask, packed_seq_lens) -> torch.Tensor:
        model, head_on_responses_only = self.models[name]
        device = torch.cuda.current_device()
        sequences, action_mask, attention_mask = sequences.to(device), action_mask.to(device), attention_mask.to(device)
        if head_on_responses_only:
            # OpenRLHF's Actor holds the DeepSpeed engine; calling it keeps ZeRO-3's hooks and prefetch.
            log_probs = scoring.action_log_probs(model.model, sequences, attention_mask, action_mask)
        else:
            log_probs = model(
                sequences,
                action_mask,
                attention_mask,
                ring_attn_group=self.strategy.ring_attn_group,
                packed_seq_lens=packed_seq_lens,
            )
        log_probs = log_probs.float().to("cpu")
        check_finite_log_probs(log_probs, action_mask.to("cpu"), f"the {name} model {self.paths[name]}")
        return log_probs

    def forward(
        self,
        sequences: torch.LongTensor,
        action_mask: torch.Tensor,
        attention_mask: torch.Tensor,
        packed_seq_lens: Optional[list] = None,
        base_sequences: Optional[torch.LongTensor] = None,
    ) -> Dict[str, torch.Tensor]:
        """Per-token response log-probs, shaped like `action_mask`: {"base": ..., "sft": ... (if held)}.
        `base_sequences` (`--coherent.eos_policy base_eos`): what the base scores instead, the same
        sequences with a final SFT-only EOS replaced by the base's own."""
        inputs = {"base": sequences if base_sequences is None else base_sequences, "sft": sequences}
        return {name: self._log_probs(name, inputs[name], action_mask, attention_mask, packed_seq_lens) for name in self.models}
