"""Command builders: each recipe stage as the exact command line it runs.

A `Stage` is one subprocess: OpenRLHF's `train_sft` / `train_dpo` (stock), this package's
`train_ppo_ray` (SRPPO, or stock PPO with a reward model) or `spin_pairs`. Every stage writes one
output (`Stage.output`) under `output_dir` and, when it finished, a marker file next to it
(resume.py); the next stage reads that output. Layout under output_dir:

    sft/  (sft_phase1/, ... for multi-phase SFT)   stage 1 model
    ppo/ | ppo_rm/ | sft_extended/ | spin/dpo/      stage 2 model (by method)
    spin/pairs.jsonl                                 SPIN preference pairs
    ckpt/<stage>/                                    OpenRLHF DeepSpeed checkpoints (resume)
    tensorboard/<stage>/
"""

from __future__ import annotations

import os
import re
import sys
from dataclasses import dataclass, field
from typing import Dict, List, Optional

from .config import PPOConfig, RecipeConfig, RecipeConfigError, SFTPhase

METHOD_STAGES = {
    "srppo": ("sft", "ppo"),
    "ppo_rm": ("sft", "ppo"),
    "sft_extended": ("sft", "sft_extended"),
    "spin": ("sft", "spin_pairs", "dpo"),
}


@dataclass
class Stage:
    name: str  # the --stages name (several SFT phases share "sft")
    label: str  # what the log prints: "sft", "sft phase 1/2", ...
    argv: List[str]
    output: str  # the model folder (or file) this stage produces
    ckpt: Optional[str] = None  # its OpenRLHF checkpoint folder (None: the tool resumes by itself)
    inputs: Dict[str, str] = field(default_factory=dict)  # config key -> local path it must read
    single_process_distributed: bool = False  # a DeepSpeed CLI started as one plain process
    needs: List[str] = field(default_factory=list)  # outputs of earlier stages it reads


def cuda_available() -> bool:
    import torch

    return torch.cuda.is_available()


def build_stages(cfg: RecipeConfig, cuda: Optional[bool] = None) -> List[Stage]:
    """Every stage of `cfg.method`, in order."""
    cuda = cuda_available() if cuda is None else cuda
    out = absolute(cfg.output_dir)
    sft_out, stages = sft_stages(cfg, out, cuda)
    if cfg.method in ("srppo", "ppo_rm"):
        stages.append(ppo_stage(cfg, out, sft_out))
    elif cfg.method == "sft_extended":
        stages.append(sft_extended_stage(cfg, out, sft_out, cuda))
    elif cfg.method == "spin":
        stages.extend(spin_stages(cfg, out, sft_out, cuda))
    return stages


def select_stages(stages: List[Stage], names: Optional[str], cfg: RecipeConfig) -> List[Stage]:
    if not names:
        return stages
    wanted = [n.strip() for n in names.split(",") if n.strip()]
    valid = METHOD_STAGES[cfg.method]
    for n in wanted:
        if n not in valid:
            raise RecipeConfigError(f"--stages: {n!r} is not a stage of method {cfg.method} ({', '.join(valid)})")
        if n == "sft" and cfg.sft_model:
            raise RecipeConfigError(f"--stages sft: sft_model is set ({cfg.sft_model}), so there is no SFT stage to run")
    return [s for s in stages if s.name in wanted]


# ---- stage 1: SFT ---------------------------------------------------------------------------


def sft_stages(cfg: RecipeConfig, out: str, cuda: bool):
    """(the SFT model stage 2 reads, the SFT stages). With `sft_model` set there is no stage 1."""
    if cfg.sft_model:
        return model_ref(cfg.sft_model), []
    phases = cfg.sft_phases()
    stages, model = [], model_ref(cfg.base_model)
    for i, phase in enumerate(phases, start=1):
        last = i == len(phases)
        name = "sft" if last else f"sft_phase{i}"
        label = "sft" if len(phases) == 1 else f"sft phase {i}/{len(phases)}"
        stage_out = os.path.join(out, name)
        key = "sft" if i == 1 else f"sft.then[{i - 2}]"
        stages.append(sft_stage(cfg, phase, model, stage_out, name, label, key, cuda))
        model = stage_out
    return model, stages


def sft_stage(cfg, phase: SFTPhase, model: str, stage_out: str, name: str, label: str, key: str, cuda: bool,
              epochs: Optional[int] = None, extra=()) -> Stage:  # fmt: skip
    out = os.path.dirname(stage_out)
    ckpt = os.path.join(out, "ckpt", name)
    args = [
        "--model.model_name_or_path", model,
        "--data.dataset", datasets_ref(phase.dataset),
        "--data.dataset_split", phase.dataset_split,
        "--data.input_key", phase.input_key,
        *(["--data.output_key", phase.output_key] if phase.output_key else []),
        *(["--data.apply_chat_template"] if phase.apply_chat_template else []),
        *opt("--data.dataset_probs", phase.dataset_probs),
        *opt("--data.tokenizer_chat_template", phase.tokenizer_chat_template),
        *opt("--data.max_samples", phase.max_samples),
        "--data.max_len", phase.max_len,
        "--train.max_epochs", phase.epochs if epochs is None else epochs,
        "--train.batch_size", phase.batch_size,
        "--train.micro_batch_size", phase.micro_batch_size,
        "--train.seed", phase.seed,
        "--adam.lr", phase.lr,
        "--lr_warmup_ratio", phase.warmup_ratio,
        "--ds.zero_stage", phase.zero_stage,
        "--ds.param_dtype", phase.param_dtype,
        "--ds.attn_implementation", phase.attn_implementation,
        *(["--model.gradient_checkpointing_enable"] if phase.gradient_checkpointing else []),
        "--ckpt.output_dir", stage_out,
        "--ckpt.path", ckpt,
        "--ckpt.save_steps", phase.save_steps,
        "--ckpt.load_enable",  # resumes from ckpt.path when a checkpoint is there, else starts fresh
        "--logger.logging_steps", 1,
        "--logger.tensorboard_dir", os.path.join(out, "tensorboard", name),
        *phase.extra_args,
        *extra,
    ]  # fmt: skip
    launch, single = launcher(cfg, "openrlhf.cli.train_sft", cuda)
    inputs = {f"{key}.dataset": p for p in local_paths(phase.dataset)}
    if is_local(cfg.base_model) and model == model_ref(cfg.base_model):
        inputs["base_model"] = model
    needs = [] if model == model_ref(cfg.base_model) else [model]
    return Stage(name, label, launch + strs(args), stage_out, ckpt, inputs, single, needs)


def sft_extended_stage(cfg: RecipeConfig, out: str, sft_out: str, cuda: bool) -> Stage:
    """Continue the SFT model for the remaining epochs with the last SFT phase's data and settings."""
    phase = cfg.sft_phases()[-1]
    more = cfg.sft_extended.total_epochs - phase.epochs
    stage_out = os.path.join(out, "sft_extended")
    return sft_stage(cfg, phase, sft_out, stage_out, "sft_extended", "sft_extended", "sft", cuda,
                     epochs=more, extra=cfg.sft_extended.extra_args)  # fmt: skip


def launcher(cfg: RecipeConfig, module: str, cuda: bool):
    """(command prefix, single_process_distributed) for a DeepSpeed training CLI."""
    kind = cfg.sft.launcher
    if kind == "auto" and not cuda and cfg.sft.launcher_args:
        # `auto` can only ask this machine (where the recipe runs) for CUDA; launcher_args (a
        # hostfile) say the work runs elsewhere, and the CPU launcher would silently drop them.
        raise RecipeConfigError(
            f"sft.launcher auto: no CUDA on this machine, so stage 1 would run as one CPU process without "
            f"sft.launcher_args {cfg.sft.launcher_args}: set sft.launcher to deepspeed or torchrun"
        )
    if kind == "auto":
        kind = "deepspeed" if cuda else "python"
    if kind == "deepspeed":
        return ["deepspeed", *cfg.sft.launcher_args, "--module", module], False
    if kind == "torchrun":
        return ["torchrun", *cfg.sft.launcher_args, "-m", module], False
    return [sys.executable, "-m", module], True


# ---- stage 2: PPO (coherent reward, or a reward model for the ppo_rm baseline) ----------------


def ppo_stage(cfg: RecipeConfig, out: str, sft_out: str) -> Stage:
    p: PPOConfig = cfg.ppo
    name = "ppo" if cfg.method == "srppo" else "ppo_rm"
    stage_out, ckpt = os.path.join(out, name), os.path.join(out, "ckpt", name)
    groups = ("actor", "critic", "ref", "reward") if p.estimator == "gae" else ("actor", "ref", "reward")
    if cfg.method == "srppo":
        reward = ["--reward.model_name_or_path", "coherent", "--coherent.base_model", model_ref(cfg.base_model)]
        reward += coherent_flags(p.coherent)
    else:
        reward = ["--reward.model_name_or_path", model_ref(cfg.ppo_rm.reward_model), *cfg.ppo_rm.extra_args]
    args = [
        "--actor.model_name_or_path", sft_out,
        *(["--critic.model_name_or_path", sft_out] if p.estimator == "gae" else []),  # paper: critic from SFT
        *reward,
        "--data.prompt_dataset", datasets_ref(p.prompt_dataset),
        "--data.prompt_split", p.prompt_split,
        "--data.input_key", p.input_key,
        *(["--data.apply_chat_template"] if p.apply_chat_template else []),
        *opt("--data.tokenizer_chat_template", p.tokenizer_chat_template),
        *opt("--data.max_samples", p.max_samples),
        "--data.max_len", p.max_len,
        "--rollout.max_new_tokens", p.max_new_tokens,
        "--rollout.temperature", p.temperature,
        "--rollout.top_p", p.top_p,
        "--rollout.batch_size", p.rollout_batch_size,
        "--rollout.n_samples_per_prompt", p.n_samples_per_prompt,
        "--rollout.micro_batch_size", p.rollout_micro_batch_size,
        "--train.batch_size", p.train_batch_size,
        "--train.micro_batch_size", p.train_micro_batch_size,
        "--train.max_epochs", p.max_epochs,
        "--train.num_episodes", p.num_episodes,
        "--train.seed", p.seed,
        "--algo.advantage.estimator", p.estimator,
        "--algo.advantage.gamma", p.gamma,
        "--algo.advantage.lambd", p.lambd,
        "--algo.kl.init_coef", p.kl_coef,
        "--actor.eps_clip", p.eps_clip,
        "--actor.adam.lr", p.actor_lr,
        *(["--critic.adam.lr", p.critic_lr] if p.estimator == "gae" else []),
        *(["--critic.freezing_steps", p.critic_warmup_buffers - 1] if p.critic_warmup_buffers else []),
        *[flag for g in groups for flag in (f"--{g}.num_nodes", p.num_nodes, f"--{g}.num_gpus_per_node", gpus(p, g))],
        "--vllm.num_engines", p.vllm_num_engines,
        "--vllm.tensor_parallel_size", p.vllm_tensor_parallel_size,
        *opt("--vllm.gpu_memory_utilization", p.vllm_gpu_memory_utilization),
        *(["--train.colocate_all"] if p.colocate_all else []),
        "--ds.zero_stage", p.zero_stage,
        "--ds.param_dtype", p.param_dtype,
        "--ds.attn_implementation", p.attn_implementation,
        *(["--actor.gradient_checkpointing_enable"] if p.gradient_checkpointing else []),
        "--ckpt.output_dir", stage_out,
        "--ckpt.path", ckpt,
        "--ckpt.save_steps", p.save_steps,
        "--ckpt.load_enable",  # OpenRLHF restores global step, episode, consumed prompts, dataloader state
        "--logger.tensorboard_dir", os.path.join(out, "tensorboard", name),
        *(["--coherent.trust_remote_code"] if cfg.trust_remote_code else []),
        *p.extra_args,
    ]  # fmt: skip
    argv = [sys.executable, "-m", "openrlhf_coherent.cli.train_ppo_ray", *strs(args)]
    inputs = {"ppo.prompt_dataset": x for x in local_paths(p.prompt_dataset)}
    if is_local(cfg.base_model):
        inputs["base_model"] = model_ref(cfg.base_model)
    if cfg.method == "ppo_rm" and is_local(cfg.ppo_rm.reward_model):
        inputs["ppo_rm.reward_model"] = model_ref(cfg.ppo_rm.reward_model)
    return Stage("ppo", name, argv, stage_out, ckpt, inputs, needs=[sft_out])


def gpus(p: PPOConfig, group: str) -> int:
    own = getattr(p, f"{group}_gpus")
    return p.num_gpus_per_node if own is None else own


def coherent_flags(options: Dict) -> List[str]:
    flags = []
    for key, value in options.items():
        if value is False or value is None:
            continue
        if key == "rollout_log":  # written by the trainer actor, whose working directory is not ours
            value = absolute(str(value))
        flags += [f"--coherent.{key}"] if value is True else [f"--coherent.{key}", str(value)]
    return flags


# ---- SPIN: pairs from the SFT model's own samples, then DPO ------------------------------------


def spin_stages(cfg: RecipeConfig, out: str, sft_out: str, cuda: bool) -> List[Stage]:
    s, first = cfg.spin, cfg.sft_phases()[0]
    data = s.dataset or first.dataset
    if "," in data or not is_local(data):
        raise RecipeConfigError(
            f"{cfg._source}: spin.dataset: spin_pairs reads one local JSONL file of demonstrations, got {data!r} "
            "(set spin.dataset, e.g. an export of the SFT data)"
        )
    input_key = s.input_key or first.input_key
    output_key = first.output_key if s.output_key is None else s.output_key
    pairs = os.path.join(out, "spin", "pairs.jsonl")
    pair_args = [
        "--model", sft_out, "--input", absolute(data), "--input_key", input_key,
        "--output_key", output_key or "", "--output", pairs,
        *(["--apply_chat_template"] if first.apply_chat_template else []),
        "--temperature", s.temperature, "--top_p", s.top_p, "--max_new_tokens", s.max_new_tokens,
        "--seed", first.seed, "--max_len", s.max_len, "--num_actors", s.num_actors,
        *opt("--max_samples", s.max_samples),
        *(["--trust_remote_code"] if cfg.trust_remote_code else []),
        *s.pairs_extra_args,
    ]  # fmt: skip
    pairs_stage = Stage("spin_pairs", "spin_pairs",
                        [sys.executable, "-m", "openrlhf_coherent.cli.spin_pairs", *strs(pair_args)],
                        pairs, None, {"spin.dataset": absolute(data)}, needs=[sft_out])  # fmt: skip

    dpo_out, ckpt = os.path.join(out, "spin", "dpo"), os.path.join(out, "ckpt", "spin_dpo")
    dpo_args = [
        "--model.model_name_or_path", sft_out,
        "--ref.model_name_or_path", sft_out,  # SPIN: the opponent (reference) is the SFT model itself
        "--data.dataset", pairs,
        "--data.prompt_key", "prompt", "--data.chosen_key", "chosen", "--data.rejected_key", "rejected",
        *(["--data.apply_chat_template"] if first.apply_chat_template else []),
        *opt("--data.tokenizer_chat_template", first.tokenizer_chat_template),
        "--data.max_len", s.max_len,
        "--model.beta", s.beta,
        "--adam.lr", s.lr,
        "--train.max_epochs", s.epochs,
        "--train.batch_size", s.batch_size,
        "--train.micro_batch_size", s.micro_batch_size,
        "--train.seed", first.seed,
        "--ds.zero_stage", first.zero_stage,
        "--ds.param_dtype", first.param_dtype,
        "--ds.attn_implementation", first.attn_implementation,
        *(["--model.gradient_checkpointing_enable"] if first.gradient_checkpointing else []),
        "--ckpt.output_dir", dpo_out,
        "--ckpt.path", ckpt,
        "--ckpt.save_steps", s.save_steps,
        "--ckpt.load_enable",
        "--logger.logging_steps", 1,
        "--logger.tensorboard_dir", os.path.join(out, "tensorboard", "spin_dpo"),
        *s.extra_args,
    ]  # fmt: skip
    launch, single = launcher(cfg, "openrlhf.cli.train_dpo", cuda)
    return [pairs_stage, Stage("dpo", "dpo", launch + strs(dpo_args), dpo_out, ckpt, {}, single, [sft_out, pairs])]


# ---- paths ----------------------------------------------------------------------------------

_HUB_ID = re.compile(r"^[A-Za-z0-9][\w.-]*/[\w.-]+$")
_DATA_EXT = (".jsonl", ".json", ".parquet", ".csv", ".arrow", ".txt", ".py")


def is_local(value: Optional[str]) -> bool:
    """A local path (must exist when its stage runs) rather than a Hugging Face hub id. Hub ids are
    `org/name`; anything that exists, starts with / . ~, ends with a data-file extension or has more
    than one `/` is local. Write `./org/name` for a local folder that looks like a hub id."""
    if not value:
        return False
    v = value.split("@")[0].strip()
    if os.path.exists(os.path.expanduser(v)) or v.startswith(("/", ".", "~")) or v.endswith(_DATA_EXT):
        return True
    return not _HUB_ID.match(v) and v.count("/") > 1


def absolute(path: str) -> str:
    # Ray workers on other nodes do not share the driver's working directory.
    return os.path.abspath(os.path.expanduser(path))


def model_ref(value: str) -> str:
    return absolute(value) if is_local(value) else value


def local_paths(datasets: Optional[str]) -> List[str]:
    """The local files/folders in a comma-separated OpenRLHF dataset list (`path@subdir` allowed)."""
    return [absolute(d.split("@")[0].strip()) for d in (datasets or "").split(",") if is_local(d.strip())]


def datasets_ref(datasets: str) -> str:
    refs = []
    for d in datasets.split(","):
        d = d.strip()
        if is_local(d):
            path, _, sub = d.partition("@")
            d = absolute(path) + (f"@{sub}" if sub else "")
        refs.append(d)
    return ",".join(refs)


def opt(flag: str, value) -> list:
    return [] if value is None else [flag, value]


def strs(args) -> List[str]:
    return [repr(a) if isinstance(a, float) else str(a) for a in args]
