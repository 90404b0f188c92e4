"""The coherent-reward Ray actor: holds the base model (and the SFT model only when needed).

It takes the place of OpenRLHF's `RewardModelActor` in the reward `RayActorGroup` (same
`--reward.num_nodes/num_gpus_per_node`, data-parallel over ranks by `async_run_method_batch`),
and loads each model exactly as OpenRLHF's `ReferenceModelActor` loads the reference model:
OpenRLHF's `Actor` wrapper in a DeepSpeed eval engine, `--ds.param_dtype`, `--ds.attn_implementation`,
`--reward.offload`, packing. The one difference is the temperature: the reward is defined on
temperature-1 log-probs, whatever `--rollout.temperature` is.
"""

from __future__ import annotations

from typing import Dict, Optional

import ray
import torch

from openrlhf.models import Actor
from openrlhf.trainer.ray.launcher import BaseModelActor
from openrlhf.utils.deepspeed import DeepspeedStrategy


@ray.remote(num_gpus=1)
class CoherentRewardActor(BaseModelActor):
    def init_model_from_pretrained(self, strategy: DeepspeedStrategy, pretrain: str = "coherent"):
        # `pretrain` is the literal "coherent" from --reward.model_name_or_path; the model paths
        # live in the plugin's flags, which travel inside strategy.args.
        self._setup_distributed(strategy)
        args = strategy.args
        self.base_model = self._load(args.coherent.base_model)
        # With reuse, log p_SFT comes from OpenRLHF's reference model: do not hold a second copy.
        self.sft_model = None if args.coherent.reuse_ref_logprobs else self._load(args.coherent.sft_model)
        strategy.print(
            f"coherent reward actor: base={args.coherent.base_model} "
            f"sft={'(reference model log-probs reused)' if self.sft_model is None else args.coherent.sft_model}"
        )

    def _load(self, path: str):
        args = self.strategy.args
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
        model = self.strategy.prepare(model)
        model.eval()
        return model

    @torch.no_grad()
    def _log_probs(self, model, sequences, action_mask, attention_mask, packed_seq_lens) -> torch.Tensor:
        device = torch.cuda.current_device()
        log_probs = model(
            sequences.to(device),
            action_mask.to(device),
            attention_mask.to(device),
            ring_attn_group=self.strategy.ring_attn_group,
            packed_seq_lens=packed_seq_lens,
        )
        return log_probs.float().to("cpu")

    def forward(
        self,
        sequences: torch.LongTensor,
        action_mask: torch.Tensor,
        attention_mask: torch.Tensor,
        packed_seq_lens: Optional[list] = None,
    ) -> Dict[str, torch.Tensor]:
        """Per-token response log-probs, shaped like `action_mask`: {"base": ..., "sft": ... (if held)}."""
        out = {"base": self._log_probs(self.base_model, sequences, action_mask, attention_mask, packed_seq_lens)}
        if self.sft_model is not None:
            out["sft"] = self._log_probs(self.sft_model, sequences, action_mask, attention_mask, packed_seq_lens)
        return out
