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

from . import config, devmode, redact

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


def warn_unused_coherent_flags(args) -> None:
    """`--coherent.*` flags set on a run that does not select the coherent reward do nothing: say so."""
    import argparse

    defaults = argparse.ArgumentParser(add_help=False)
    config.add_coherent_arguments(defaults)
    default_values = vars(defaults.parse_args([]))
    coherent = getattr(args, "coherent", None)
    if coherent is None:
        return
    changed = [
        f"--{key}"
        for key, default in default_values.items()
        if key.startswith("coherent.") and getattr(coherent, key.split(".", 1)[1], default) != default
    ]
    if changed:
        logger.warning(
            "openrlhf_coherent: %s set, but --reward.model_name_or_path is %r, not %r: these flags have no effect",
            ", ".join(changed), args.reward.model_name_or_path, config.COHERENT,
        )  # fmt: skip


class CoherentRewardPlugin:
    name = config.COHERENT

    def add_arguments(self, parser) -> None:
        config.add_coherent_arguments(parser)
        devmode.allow_fp32_param_dtype(parser)

    def selected(self, args) -> bool:
        """The one test of "this run uses the coherent reward", on the parsed value (argparse also
        accepts abbreviated flag names): the CLI installs the reward actor and trainer by it, and
        validation runs by it."""
        return args.reward.model_name_or_path == self.name

    def validate(self, args) -> None:
        # Before OpenRLHF prints every argument and uploads them to wandb: never the key itself.
        redact.check_wandb_key(args)
        if self.selected(args):
            config.validate(args)  # includes config.check_ppo_args, after the coherent flags are resolved
        else:
            warn_unused_coherent_flags(args)
            config.check_ppo_args(args, coherent=False)
        self._args = args

    def ray_init_kwargs(self, kwargs: dict) -> dict:
        """OpenRLHF's `ray.init` kwargs plus the job's device decision (`devmode.ray_init_settings`:
        from OPENRLHF_COHERENT_DEVICE, or the cluster the job joins, or this machine), which every
        worker receives; in the CPU mode starting a local Ray, fake GPU resources. The decision is
        also applied to this driver (the CPU rollout engine in place of vLLM's, ...) here."""
        try:
            device, reason, extra = devmode.ray_init_settings(
                fake_gpus_needed(self._args), kwargs.get("address"), kwargs.get("_temp_dir")
            )
        except devmode.DeviceError as e:
            raise config.ConfigError(str(e)) from None
        if device == "cuda" and self._args.ds.param_dtype == devmode.FP32:
            raise config.ConfigError(
                f"--ds.param_dtype fp32 exists only in the CPU development mode, and this job runs on CUDA ({reason}): "
                "use bf16 (or set OPENRLHF_COHERENT_DEVICE=cpu)"
            )
        devmode.settle(device, reason)
        logger.warning("openrlhf_coherent: this job runs on %s (%s)", device, reason)
        merged = dict(kwargs)
        runtime_env = dict(kwargs.get("runtime_env") or {})
        extra_env = extra.pop("runtime_env", {})
        runtime_env["env_vars"] = {**extra_env.get("env_vars", {}), **runtime_env.get("env_vars", {})}
        runtime_env["env_vars"][devmode.DEVICE_ENV] = device  # the decision itself is not the caller's to override
        try:
            runtime_env["env_vars"] = devmode.drop_job_env_vars(runtime_env["env_vars"])
        except devmode.DeviceError as e:
            raise config.ConfigError(str(e)) from None
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
