"""The coherent-reward plugin: what OpenRLHF's `train_ppo_ray` needs to know to run SRPPO.

One object, five hooks, called at the five points where SRPPO differs from stock PPO:

  add_arguments(parser)     the `--coherent.*` flag group, on OpenRLHF's own parser
  validate(args)            after OpenRLHF's `hierarchize`, before Ray starts
  ray_init_kwargs(kwargs)   OpenRLHF's `ray.init` kwargs + the CPU dev-mode settings
  reward_actor_class        the Ray actor class for the reward group (instead of RewardModelActor)
  trainer_class             the Ray PPO trainer class (instead of PPOTrainer)

Stock OpenRLHF calls these itself once `patches/openrlhf-0.11.2-reward-plugins.patch` is applied
(it finds the plugin through the `openrlhf.reward_plugins` entry point, by the name given to
`--reward.model_name_or_path`). Without the patch, `openrlhf_coherent.cli.train_ppo_ray` installs
the same hooks around stock OpenRLHF's CLI.
"""

from __future__ import annotations

import logging

from . import config, devmode

logger = logging.getLogger("openrlhf_coherent")


def fake_gpus_needed(args) -> int:
    """GPUs OpenRLHF will ask Ray for (no colocation assumed): CPU dev mode declares this many."""
    total = args.actor.num_nodes * args.actor.num_gpus_per_node
    if args.algo.kl.init_coef > 0:
        total += args.ref.num_nodes * args.ref.num_gpus_per_node
    if args.critic.model_name_or_path:
        total += args.critic.num_nodes * args.critic.num_gpus_per_node
    total += args.reward.num_nodes * args.reward.num_gpus_per_node
    total += (args.vllm.num_engines or 0) * args.vllm.tensor_parallel_size
    return total


class CoherentRewardPlugin:
    name = config.COHERENT

    def add_arguments(self, parser) -> None:
        config.add_coherent_arguments(parser)
        devmode.allow_fp32_param_dtype(parser)

    def selected(self, args) -> bool:
        return args.reward.model_name_or_path == self.name

    def validate(self, args) -> None:
        if self.selected(args):
            config.validate(args)
        self._args = args

    def ray_init_kwargs(self, kwargs: dict) -> dict:
        """Merge the CPU dev-mode settings (fake GPU resources, per-worker shims) into OpenRLHF's
        `ray.init` kwargs. On a CUDA machine only the worker setup hook is added (a no-op there
        unless vllm/flash_attn are missing)."""
        extra = devmode.ray_init_kwargs(fake_gpus_needed(self._args))
        merged = dict(kwargs)
        runtime_env = dict(kwargs.get("runtime_env") or {})
        extra_env = extra.pop("runtime_env", {})
        runtime_env["env_vars"] = {**extra_env.get("env_vars", {}), **runtime_env.get("env_vars", {})}
        runtime_env.update({k: v for k, v in extra_env.items() if k != "env_vars"})
        merged.update(extra)
        merged["runtime_env"] = runtime_env
        return merged

    @property
    def reward_actor_class(self):
        from .actor import CoherentRewardActor

        return CoherentRewardActor

    @property
    def trainer_class(self):
        from .trainer import CoherentPPOTrainer

        return CoherentPPOTrainer
