"""`python -m openrlhf_coherent.cli.train_ppo_ray`: OpenRLHF's train_ppo_ray, with SRPPO.

    python -m openrlhf_coherent.cli.train_ppo_ray <every openrlhf train_ppo_ray flag> \\
        --reward.model_name_or_path coherent --coherent.base_model <pretrained base>

This runs OpenRLHF 0.11.2's own `openrlhf.cli.train_ppo_ray` module as `__main__` (its parser,
its argument checks, its `train()`), with the plugin's hooks (`openrlhf_coherent.plugin`)
installed at exactly the points where `patches/` would call them in stock OpenRLHF:

  argparse parse_args          -> plugin.add_arguments  (our flags join OpenRLHF's parser)
  openrlhf.utils.config.hierarchize -> plugin.validate  (before Ray starts)
  ray.init                     -> plugin.ray_init_kwargs (the job's device; CPU dev mode: fake GPUs, worker shims)
  launcher.RewardModelActor    -> plugin.reward_actor_class
  ppo_trainer.PPOTrainer       -> plugin.trainer_class (else trainer.SeededPPOTrainer: a seeded prompt order)

Old flag spellings (`--pretrain`, `--reward_pretrain coherent`, `--critic_pretrain`,
`--prompt_data`, ...) are translated first. Without `--reward.model_name_or_path coherent` it is
plain OpenRLHF PPO (still with the CPU dev mode when there is no GPU, and a prompt order seeded by
--train.seed, which stock OpenRLHF 0.11.2 leaves unseeded).
"""

from __future__ import annotations

import argparse
import contextlib
import runpy
import sys
from typing import Iterator, Optional, Sequence

from openrlhf_coherent.cli.runpy_hooks import replaced
from openrlhf_coherent import config, devmode
from openrlhf_coherent.plugin import CoherentRewardPlugin
from openrlhf_coherent.devmode.startup import imports_without_gc

OPENRLHF_CLI = "openrlhf.cli.train_ppo_ray"


@contextlib.contextmanager
def plugin_installed(plugin: CoherentRewardPlugin, coherent: bool) -> Iterator[None]:
    with imports_without_gc():  # most of the driver's start-up (openrlhf_coherent.devmode.startup)
        import ray

        import openrlhf.trainer.ppo_trainer as ppo_trainer
        import openrlhf.trainer.ray.launcher as launcher
        import openrlhf.utils.config as openrlhf_config

        try:  # present only where patches/ was applied to the installed OpenRLHF
            import openrlhf.utils.reward_plugins as patched_plugins
        except ImportError:
            patched_plugins = None

    original_parse_args = argparse.ArgumentParser.parse_args
    original_hierarchize = openrlhf_config.hierarchize
    original_ray_init = ray.init

    def parse_args(parser, *args, **kwargs):
        plugin.add_arguments(parser)
        argparse.ArgumentParser.parse_args = original_parse_args  # only OpenRLHF's one parser
        return original_parse_args(parser, *args, **kwargs)

    def hierarchize(flat_args):
        args = original_hierarchize(flat_args)
        plugin.validate(args)
        return args

    def ray_init(*args, **kwargs):
        # The plugin may probe a running cluster with ray.init itself: give it the real one.
        with replaced(ray, "init", original_ray_init):
            merged = plugin.ray_init_kwargs(kwargs)
        return original_ray_init(*args, **merged)

    with contextlib.ExitStack() as stack:
        stack.enter_context(replaced(argparse.ArgumentParser, "parse_args", parse_args))
        stack.enter_context(replaced(openrlhf_config, "hierarchize", hierarchize))
        stack.enter_context(replaced(ray, "init", ray_init))
        if patched_plugins is not None:
            # A patched CLI finds this plugin by its entry point and calls the same hooks itself: a
            # second add_arguments is refused by argparse (conflicting --coherent.* flags), and
            # validate/ray_init_kwargs would run twice. Here these hooks are the only ones.
            stack.enter_context(replaced(patched_plugins, "find_reward_plugin", lambda argv=None: None))
        if coherent:
            stack.enter_context(replaced(launcher, "RewardModelActor", plugin.reward_actor_class))
            stack.enter_context(replaced(ppo_trainer, "PPOTrainer", plugin.trainer_class))
        else:
            from openrlhf_coherent.trainer import SeededPPOTrainer

            stack.enter_context(replaced(ppo_trainer, "PPOTrainer", SeededPPOTrainer))
        yield


class _Parsed(Exception):
    def __init__(self, args):
        self.parsed = args


class _ParseOnlyPlugin(CoherentRewardPlugin):
    def validate(self, args) -> None:
        super().validate(args)
        raise _Parsed(args)


class _SelectionProbe(CoherentRewardPlugin):
    """Parses only: which reward the command line selects, as OpenRLHF's parser reads it."""

    def validate(self, args) -> None:
        raise _Parsed(args)


def _parse(argv: Sequence[str], plugin: CoherentRewardPlugin):
    saved_argv = sys.argv
    sys.argv = [OPENRLHF_CLI, *argv]
    try:
        with plugin_installed(plugin, coherent=False):
            runpy.run_module(OPENRLHF_CLI, run_name="__main__", alter_sys=True)
    except _Parsed as parsed:
        return parsed.parsed
    finally:
        sys.argv = saved_argv
    raise RuntimeError(f"{OPENRLHF_CLI} finished without parsing its arguments")


def parse_args(argv: Sequence[str]):
    """The `args` tree OpenRLHF's own parser builds for a train_ppo_ray command line (after
    `hierarchize` and the plugin's validation, before OpenRLHF's later defaults); starts nothing."""
    devmode.install_import_stand_ins()  # the device is decided when Ray starts, not here
    return _parse(config.translate_legacy_flags(argv), _ParseOnlyPlugin())


def main(argv: Optional[Sequence[str]] = None) -> int:
    argv = config.translate_legacy_flags(sys.argv[1:] if argv is None else argv)
    # Before anything imports OpenRLHF: import stand-ins for missing vllm/flash_attn. Whether the
    # CPU development mode is on is decided when Ray starts, from where the job runs
    # (plugin.ray_init_kwargs -> devmode.ray_init_settings).
    devmode.install_import_stand_ins()
    # Whether the coherent reward is selected, read by OpenRLHF's own parser (which accepts
    # abbreviations such as --reward.model_name_or_pat): the reward actor and trainer classes must
    # be swapped before OpenRLHF's CLI module binds them, and validation must agree with that.
    coherent = CoherentRewardPlugin().selected(_parse(argv, _SelectionProbe()))
    sys.argv = [OPENRLHF_CLI, *argv]

    def run_openrlhf():
        with plugin_installed(CoherentRewardPlugin(), coherent):
            runpy.run_module(OPENRLHF_CLI, run_name="__main__", alter_sys=True)

    return config.exit_status(run_openrlhf)


if __name__ == "__main__":
    sys.exit(main())
