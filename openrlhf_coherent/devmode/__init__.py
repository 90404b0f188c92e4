"""CPU development mode: run real, unmodified OpenRLHF 0.11.2 PPO on a machine without CUDA.

Everything here patches OpenRLHF (or torch / DeepSpeed) from the outside; no OpenRLHF code is
copied. Two layers:

Import stand-ins (`install_import_stand_ins`, applied wherever the real package is missing,
GPU or not, because OpenRLHF imports these at module import time):
  - `vllm`: `SamplingParams`, `vllm.inputs.TokensPrompt`, `vllm.utils.random_uuid`, a
    `__version__` (read by version gates in `create_vllm_engines` and `PolicyModelActor`); any
    other attribute raises an error that says vLLM is missing.
  - `flash_attn`: `flash_attn.bert_padding` (`index_first_axis`, `pad_input`, `unpad_input`,
    `rearrange`, in pure torch) and `flash_attn.utils.distributed.all_gather`, imported by
    `openrlhf.models.ring_attn_utils`. `flash_attn.ops` stays missing so
    `models.utils.log_probs_from_logits` takes its ImportError fallback.

Runtime shims (`settle("cpu", ...)`, only in the CPU mode; each names what it patches):
  - `transformers.utils.is_sklearn_available` / `is_scipy_available`: False, so transformers skips
    ~3 s of imports for features no dev-mode run uses (assisted decoding, detection losses).
  - `torch.cuda.set_device/current_device/synchronize/empty_cache`: OpenRLHF calls them
    unconditionally; `current_device()` returns the CPU device so `.to(current_device())` works.
  - `NaiveReplayBuffer.__init__`: its `target_device` is built as `f"cuda:{current_device()}"`.
  - `deepspeed.comm.torch.build_shm_op`: skip the ~100 s JIT build of DeepSpeed's CPU
    shared-memory allreduce; gloo does the collectives.
  - `openrlhf.utils.deepspeed.deepspeed.get_train_ds_config`: ask DeepSpeed for torch's AdamW
    (`torch_adam`) instead of its CPU FusedAdam, another C++ JIT build.
  - `openrlhf.trainer.ray.vllm_engine.RolloutRayActor`: `create_vllm_engines` builds
    `cpu_rollout.CpuRolloutActor` (HF `generate`, OpenRLHF's own executors) instead of vLLM.
  - `SamplesGenerator._dispatch_prompts_to_vllm` and `_generate_vllm`: the CPU engines batch by
    dispatch, not by arrival time, and each rollout's samples keep the dispatch order instead of
    the order Ray hands them over (`cpu_rollout.deterministic_dispatch`, `dispatch_ordered`): a
    command repeats bit for bit on one machine.
  - `ActorPPOTrainer._init_vllm_sync_group`: no NCCL group to the engines.
  - `ActorPPOTrainer.broadcast_to_vllm`: ship the (ZeRO-3 gathered) state dict to every CPU
    engine through the Ray object store.
  - `ActorPPOTrainer.ppo_train`: every core of the machine (shared among the policy's ranks) for
    the policy's update, which runs alone; the driver gives every Ray worker one OpenMP thread
    otherwise (`ray_init_settings`). Neither applies when the user sets OMP_NUM_THREADS.
  - `openrlhf.utils.utils.convert_to_torch_dtype` accepts "fp32" (and `allow_fp32_param_dtype`
    adds it to `--ds.param_dtype`'s choices): exact fp32 models for tests; DeepSpeed then enables
    neither bf16 nor fp16.

Where the dev mode is on: one decision per job, never from a Ray worker's CUDA and never from
the driver's CUDA alone when the job runs on a cluster (`job_device`):
  - `OPENRLHF_COHERENT_DEVICE=cpu|cuda` decides explicitly; `auto` (the default) decides from
    where the work runs:
  - a Ray started here (no RAY_ADDRESS, no `ray start` cluster on this machine): this machine,
    i.e. `torch.cuda.is_available()` in the driver;
  - a running cluster (RAY_ADDRESS, `ray job submit`, a local `ray start`): its nodes, read over a
    short probe connection. GPUs that Ray detected (it adds an `accelerator_type:<model>` resource
    only when it finds the hardware) mean CUDA; no GPUs mean the CPU mode. GPUs without that tag
    (`ray start --num-gpus N` on CPU machines: this mode's fake GPUs; or NVML failing inside a
    container while CUDA works) are told apart by a one-GPU task on the cluster that asks torch;
    if none can start in time the job is refused, naming OPENRLHF_COHERENT_DEVICE.
The driver passes the decision to every worker in `runtime_env.env_vars` and its set-up hook
(`worker_setup`) only reads it: calling `torch.cuda.is_available()` there would pin the worker's
visible devices before Ray sets CUDA_VISIBLE_DEVICES for the actor. The driver applies the shims
to itself once decided (`settle`). Processes that run where they are (DeepSpeed CLIs, a
sitecustomize child) call `apply()`, which decides from the switch or this process's CUDA.

Not shimmed: the attention default (flash_attention_2; pass `--ds.attn_implementation eager` or
`sdpa`), `--ds.enable_sleep` (DeepSpeed state offload needs FusedAdam) and `--train.enable_ema`
(moves weights to "cuda").
"""

from __future__ import annotations

import functools
import importlib.machinery
import importlib.util
import logging
import os
import sys
import types
import uuid
from dataclasses import dataclass
from typing import List, Optional, Tuple, TypedDict

from openrlhf_coherent.devmode.startup import imports_without_gc

logger = logging.getLogger(__name__)

# This process's decision once taken ("cpu": the dev mode's runtime shims are applied; "cuda":
# they never will be), and why, for the one log line that announces it.
_decision: Optional[str] = None

# The explicit switch. Read by every process; the driver writes its decision into the workers' env.
DEVICE_ENV = "OPENRLHF_COHERENT_DEVICE"
DEVICES = ("auto", "cpu", "cuda")

# OpenRLHF's own defaults for these (cli/train_ppo_ray.py::train), kept user-overridable.
_OPENRLHF_ENV_DEFAULTS = {
    "TOKENIZERS_PARALLELISM": "true",
    "NCCL_DEBUG": "WARN",
    "RAY_ENABLE_ZERO_COPY_TORCH_TENSORS": "1",
}


# How many threads the policy's PPO update uses in a CPU job: "all_cores" (the cores of the worker's
# machine, shared among the policy's ranks) or "fixed" (OMP_NUM_THREADS, set by the user).
POLICY_UPDATE_THREADS_ENV = "OPENRLHF_COHERENT_POLICY_UPDATE_THREADS"


class DeviceError(ValueError):
    """A device set-up that cannot work (names OPENRLHF_COHERENT_DEVICE or the cluster); the CLIs
    report it like a bad flag (exit status 2, before any model is loaded)."""


def requested_device() -> str:
    """The explicit switch: OPENRLHF_COHERENT_DEVICE = cpu | cuda | auto (default)."""
    value = os.environ.get(DEVICE_ENV, "").strip().lower() or "auto"
    if value not in DEVICES:
        raise DeviceError(f"{DEVICE_ENV}={value!r}: choose one of {', '.join(DEVICES)}")
    return value


def local_device() -> Tuple[str, str]:
    """(device, reason) for work that runs in this process, where it is: the switch, else whether
    this process sees CUDA. Not for a Ray worker (see the module docstring) nor for a driver whose
    work runs on a cluster (`job_device`)."""
    requested = requested_device()
    if requested != "auto":
        return requested, f"{DEVICE_ENV}={requested}"
    import torch

    if torch.cuda.is_available():
        return "cuda", "CUDA is available here"
    return "cpu", "CUDA not available here"


def cpu_mode() -> bool:
    """True iff this process runs (or, not decided yet, would run) in the CPU development mode."""
    if _decision is not None:
        return _decision == "cpu"
    return local_device()[0] == "cpu"


def usable_cores(cgroup_root: str = "/sys/fs/cgroup", proc_cgroup: str = "/proc/self/cgroup") -> int:
    """The cores this process may really use, for thread counts and Ray's CPU slots in the CPU mode:
    its CPU affinity (taskset, Slurm, cpusets), capped by a cgroup CPU quota (`docker --cpus`,
    Kubernetes CPU limits), rounded down, at least 1. `os.cpu_count()` reports the host's cores: in a
    2-CPU container on a 64-core host it would start 64 threads that the quota then throttles."""
    try:
        cores = len(os.sched_getaffinity(0))
    except (AttributeError, OSError):  # not Linux
        cores = os.cpu_count() or 1
    quota = _cgroup_cpu_quota(cgroup_root, proc_cgroup)
    if quota is not None:
        cores = min(cores, int(quota))
    return max(1, cores)


def _cgroup_cpu_quota(cgroup_root: str, proc_cgroup: str) -> Optional[float]:
    """The smallest CPU quota (in cores) on this process's cgroup path and its parents, cgroup v2
    (`cpu.max`: "<quota> <period>" or "max <period>") or v1 (`cpu.cfs_quota_us`, -1 for none, over
    `cpu.cfs_period_us`); None without one, or where the files cannot be read."""
    try:
        with open(proc_cgroup) as f:
            lines = f.read().splitlines()
    except OSError:
        return None
    quotas = []
    for line in lines:
        fields = line.split(":", 2)
        if len(fields) != 3:
            continue
        _, controllers, path = fields
        if controllers == "":  # v2 unified hierarchy
            folders, read = [cgroup_root], _read_cpu_max
        elif "cpu" in controllers.split(","):  # v1: mounted as cpu, or cpu,cpuacct
            folders = [os.path.join(cgroup_root, name) for name in (controllers, "cpu", "cpu,cpuacct")]
            read = _read_cfs_quota
        else:
            continue
        parts = [part for part in path.split("/") if part]
        for folder in dict.fromkeys(folders):
            for depth in range(len(parts), -1, -1):
                quota = read(os.path.join(folder, *parts[:depth]))
                if quota is not None:
                    quotas.append(quota)
    return min(quotas) if quotas else None


def _read_cpu_max(folder: str) -> Optional[float]:
    try:
        with open(os.path.join(folder, "cpu.max")) as f:
            quota, period = f.read().split()[:2]
        return None if quota == "max" or int(period) <= 0 else int(quota) / int(period)
    except (OSError, ValueError):
        return None


def _read_cfs_quota(folder: str) -> Optional[float]:
    try:
        with open(os.path.join(folder, "cpu.cfs_quota_us")) as f:
            quota = int(f.read())
        with open(os.path.join(folder, "cpu.cfs_period_us")) as f:
            period = int(f.read())
        return None if quota <= 0 or period <= 0 else quota / period
    except (OSError, ValueError):
        return None


def settle(device: str, reason: str) -> None:
    """Take this process's decision once: install the import stand-ins and, for "cpu", the runtime
    shims. A second, different decision is a bug (shims cannot be taken back): it raises."""
    global _decision
    install_import_stand_ins()
    if _decision is not None:
        if _decision != device:
            raise RuntimeError(f"openrlhf_coherent dev mode: this process already runs on {_decision}, cannot switch to {device}")
        return
    _decision = device
    if device != "cpu":
        return
    logger.warning(
        "openrlhf_coherent dev mode (%s): applying CPU shims (torch.cuda no-ops, gloo, torch AdamW, "
        "HF-generate rollout engine, object-store weight sync)",
        reason,
    )
    # The shims import torch, DeepSpeed and OpenRLHF's trainer: most of this process's start-up.
    with imports_without_gc():
        _skip_unused_optional_imports_in_transformers()
        _patch_torch_cuda()
        _patch_replay_buffer_device()
        _patch_deepspeed_cpu_builds()
        _patch_rollout_engine()
        _patch_weight_sync()
        _patch_policy_update_threads()
        _patch_fp32_param_dtype()


def apply() -> None:
    """For a process whose work runs where it is (DeepSpeed CLIs, the evaluator's driver, a child
    with `cpu_site` on its path): import stand-ins, and the CPU shims when `local_device()` says
    cpu. Idempotent."""
    if _decision is None:
        settle(*local_device())
    else:
        install_import_stand_ins()


def worker_setup() -> None:
    """`worker_process_setup_hook` of the Ray workers of a job started by `ray_init_settings`: the
    driver's decision arrives in OPENRLHF_COHERENT_DEVICE. No CUDA query here (see the docstring)."""
    requested = requested_device()
    if requested == "auto":
        # Not written by our driver (a hand-made runtime_env): the stock, CUDA behaviour.
        settle("cuda", f"{DEVICE_ENV} not set by the driver")
    else:
        settle(requested, "decided by the driver")


def plain_worker_setup() -> None:
    """`worker_process_setup_hook` of the evaluator tools' workers (`data_tools.actor.PairScorer`):
    they load models with plain transformers and take their device from torch, so they need only
    the import stand-ins, on CPU as on CUDA. The CPU shims of `worker_setup` import OpenRLHF's
    trainer and DeepSpeed, which these workers never use: with them a worker took 11.1 CPU-seconds
    to start on 2 cores, without them 3.5."""
    install_import_stand_ins()


def joins_existing_cluster(address: Optional[str] = None, temp_dir: Optional[str] = None) -> bool:
    """Whether `ray.init(address=address)` connects to a running cluster rather than starting one.
    Ray's own resolution: RAY_ADDRESS, then a cluster `ray start` left on this machine."""
    address = address or os.environ.get("RAY_ADDRESS") or None
    if address and address.startswith("ray://"):
        return True  # Ray Client
    from ray._private import services

    services.find_gcs_addresses.cache_clear()  # ray.init clears it too: clusters come and go
    return services.canonicalize_bootstrap_address(address, temp_dir) is not None


def device_from_nodes(nodes: List[dict]) -> Tuple[str, str]:
    """(device, reason) from `ray.nodes()`: "cuda" iff an alive node has GPUs that Ray detected."""
    alive = [node for node in nodes if node.get("Alive", True)]
    gpus = sum(node.get("Resources", {}).get("GPU", 0) for node in alive)
    detected = sorted(
        {
            key.split(":", 1)[1]
            for node in alive
            if node.get("Resources", {}).get("GPU", 0)
            for key in node.get("Resources", {})
            if key.startswith("accelerator_type:")
        }
    )
    if detected:
        return "cuda", f"the Ray cluster has {gpus:g} GPUs ({', '.join(detected)})"
    if gpus:
        return "cpu", f"the Ray cluster declares {gpus:g} GPUs but Ray detected no GPU hardware (fake GPUs)"
    return "cpu", "the Ray cluster has no GPUs"


def _declared_gpus(nodes: List[dict]) -> float:
    return sum(node.get("Resources", {}).get("GPU", 0) for node in nodes if node.get("Alive", True))


# How long the one-GPU probe task may wait for a free GPU of the cluster (seconds).
GPU_PROBE_TIMEOUT_ENV = "OPENRLHF_COHERENT_GPU_PROBE_TIMEOUT_S"


def _gpu_task_sees_cuda() -> bool:
    """Whether a one-GPU task on the connected cluster sees CUDA (torch, where the work runs).
    DeviceError if no GPU frees up for it in time: the job is not run on a guess."""
    import ray

    timeout = float(os.environ.get(GPU_PROBE_TIMEOUT_ENV, "300"))

    @ray.remote(num_gpus=1, num_cpus=0)
    def cuda_available() -> bool:
        import torch

        return torch.cuda.is_available()

    ref = cuda_available.remote()
    ready, _ = ray.wait([ref], timeout=timeout)
    if not ready:
        ray.cancel(ref, force=True)
        raise DeviceError(
            f"the Ray cluster declares GPUs without an accelerator type (fake GPUs, or NVML failing in a container "
            f"while CUDA works), and a one-GPU task to tell which did not start within {timeout:g} s "
            f"({GPU_PROBE_TIMEOUT_ENV}): set {DEVICE_ENV}=cuda or {DEVICE_ENV}=cpu"
        )
    return bool(ray.get(ref))


def _probe_cluster(address: Optional[str], temp_dir: Optional[str], requested: str = "auto") -> Tuple[List[dict], Optional[bool]]:
    """The nodes of the running cluster, over a connection closed again before the job's own
    `ray.init` (whose runtime_env must already carry the decision to the workers); and, where they
    declare GPUs that Ray tagged with no accelerator type and no device was requested, whether a
    one-GPU task there sees CUDA (else None): a real GPU cluster is never taken for a fake one."""
    import ray

    probe_kwargs = {"address": address, "log_to_driver": False, "logging_level": logging.WARNING}
    if temp_dir:
        probe_kwargs["_temp_dir"] = temp_dir
    ray.init(**probe_kwargs)
    try:
        nodes = ray.nodes()
        untagged = requested == "auto" and _declared_gpus(nodes) > 0 and device_from_nodes(nodes)[0] == "cpu"
        return nodes, (_gpu_task_sees_cuda() if untagged else None)
    finally:
        ray.shutdown()


def job_device(address: Optional[str] = None, temp_dir: Optional[str] = None, num_gpus: int = 0) -> Tuple[str, str, bool]:
    """(device, reason, joining) for a Ray job this process is about to start or join (see the
    module docstring). In the CPU mode on a cluster that declares no GPUs at all, OpenRLHF's
    placement groups would wait forever: that raises DeviceError instead."""
    requested = requested_device()
    joining = joins_existing_cluster(address, temp_dir)
    if not joining:
        device, reason = local_device()
        return device, reason + " (Ray starts on this machine)", False
    if requested == "cuda":
        return "cuda", f"{DEVICE_ENV}=cuda", True
    nodes, cuda_seen = _probe_cluster(address, temp_dir, requested)
    device, reason = device_from_nodes(nodes)
    if cuda_seen:
        device, reason = "cuda", f"a one-GPU task on the Ray cluster sees CUDA (Ray tagged no accelerator type: {reason})"
    elif cuda_seen is False:
        reason += "; a one-GPU task there sees no CUDA"
    if requested == "cpu":
        device, reason = "cpu", f"{DEVICE_ENV}=cpu; {reason}"
    if device == "cpu":
        declared = _declared_gpus(nodes)
        if not declared:
            raise DeviceError(
                f"the Ray cluster this job joins has no GPUs, and the CPU development mode cannot add any to a "
                f"running cluster: start it with `ray start --head --num-gpus {max(num_gpus, 1)}` (fake GPUs), or, "
                f"if its GPU nodes start on demand, set {DEVICE_ENV}=cuda"
            )
        if declared < num_gpus:
            logger.warning("the Ray cluster declares %g GPUs; this job asks for up to %d", declared, num_gpus)
    return device, reason, True


def ray_init_settings(
    num_gpus: int = 8, address: Optional[str] = None, temp_dir: Optional[str] = None, openrlhf_workers: bool = True
) -> Tuple[str, str, dict]:
    """(device, reason, kwargs for `ray.init()`) for a job this process starts or joins.

    Every worker gets the decision (OPENRLHF_COHERENT_DEVICE) and `worker_setup` as its set-up
    hook; `openrlhf_workers=False` (the evaluator tools, whose workers load models with plain
    transformers) gives them `plain_worker_setup` instead. Starting a local Ray in the CPU mode,
    the kwargs also declare `num_gpus` fake GPUs and enough CPU slots for one actor per GPU bundle
    plus the PPO controller; joining a running cluster they declare nothing (Ray refuses
    num_gpus/num_cpus there).
    """
    device, reason, joining = job_device(address, temp_dir, num_gpus)
    env_vars = {key: os.environ.get(key, default) for key, default in _OPENRLHF_ENV_DEFAULTS.items()}
    env_vars[DEVICE_ENV] = device
    from ..remote_code import TRUST_ENV  # the user's remote-code choice (config.validate): workers of a joined cluster do not inherit it

    if TRUST_ENV in os.environ:
        env_vars[TRUST_ENV] = os.environ[TRUST_ENV]
    if device == "cpu":
        # One OpenMP thread per Ray worker, unless the user's environment says otherwise. Ray's own
        # default (OMP_NUM_THREADS = the actor's CPU slots, 1) is applied after the set-up hook,
        # which in this mode has already imported torch, so without this every worker ran with one
        # thread per core: 5-7 workers on a laptop's cores, each waiting at every parallel region
        # for a second thread that has no core. Measured on 2 cores (the demo's PPO, its earlier 48-step budget):
        # 0.98 s per step before, 0.40 s with one thread.
        # The policy's update runs alone, so it takes every core (`_patch_policy_update_threads`),
        # unless the user fixed the count.
        env_vars["OMP_NUM_THREADS"] = os.environ.get("OMP_NUM_THREADS", "1")
        env_vars[POLICY_UPDATE_THREADS_ENV] = "fixed" if "OMP_NUM_THREADS" in os.environ else "all_cores"
    hook = "worker_setup" if openrlhf_workers else "plain_worker_setup"
    runtime_env = {"worker_process_setup_hook": f"{__name__}.{hook}", "env_vars": drop_job_env_vars(env_vars)}
    if device == "cuda" or joining:
        return device, reason, {"runtime_env": runtime_env}
    # On a loaded 2-core machine the raylet can take longer than Ray's default 60 s to register
    # (seen in CI-like runs with other jobs on the cores); only the driver's ray.init reads this.
    os.environ.setdefault("RAY_raylet_start_wait_time_s", "180")
    # The raylet reads this: no "prestarted" Python workers when the driver connects. The actors
    # start their own workers anyway, so the prestarted ones (2 in a tiny PPO run, 74 over the test
    # suite) only imported Ray and competed for the cores during start-up. Tiny 2-step GAE run on 2
    # cores, 4 runs each, alternating: 58.9 s wall and 105 CPU-s without them, 64.7 s and 113 with.
    os.environ.setdefault("RAY_prestart_worker_first_driver", "0")
    return device, reason, {
        "num_gpus": num_gpus,
        # OpenRLHF asks 1 CPU per GPU bundle, and 1 for the PPOTrainer actor: oversubscribe
        # the real cores, the actors mostly take turns.
        "num_cpus": max(usable_cores(), num_gpus + 2),
        "include_dashboard": False,
        "runtime_env": runtime_env,
    }


def drop_job_env_vars(env_vars: dict) -> dict:
    """`env_vars` less those the submitted job's runtime_env already sets (inside `ray job submit`).

    Ray refuses to merge a driver's runtime_env with the job's when both set one env var, even to
    the same value; the job's reaches the workers anyway. A different value raises DeviceError
    naming the variable: the workers would not get what this driver decided."""
    import json

    from ray._private.runtime_env.constants import RAY_JOB_CONFIG_JSON_ENV_VAR

    job_config = os.environ.get(RAY_JOB_CONFIG_JSON_ENV_VAR)
    if not job_config:
        return env_vars
    job_env = (json.loads(job_config).get("runtime_env") or {}).get("env_vars") or {}
    for key, value in job_env.items():
        if key in env_vars and str(env_vars[key]) != str(value):
            raise DeviceError(
                f"{key}={value!r} in the submitted job's runtime_env, but this job needs {key}={env_vars[key]!r} "
                f"in its Ray workers: change or remove it in --runtime-env-json"
            )
    return {key: value for key, value in env_vars.items() if key not in job_env}


def ray_init_kwargs(num_gpus: int = 8, address: Optional[str] = None, openrlhf_workers: bool = True) -> dict:
    """`ray_init_settings`' kwargs, with the decision also applied to this process (the driver)."""
    device, reason, kwargs = ray_init_settings(num_gpus, address, openrlhf_workers=openrlhf_workers)
    if _decision is None:
        settle(device, reason)
    elif _decision != device:
        # A driver that called `apply()` first (the evaluator tools) keeps its own shims: its workers,
        # where the models run, follow the job's decision.
        logger.warning("openrlhf_coherent dev mode: this driver runs on %s, its Ray workers on %s (%s)", _decision, device, reason)
    return kwargs


# ---------------------------------------------------------------------------------------------
# Import stand-ins
# ---------------------------------------------------------------------------------------------


def install_import_stand_ins() -> None:
    """Put import-only `vllm` / `flash_attn` modules in `sys.modules` where the real one is missing."""
    for name, build in (("vllm", _vllm_stand_in), ("flash_attn", _flash_attn_stand_in)):
        if name in sys.modules or importlib.util.find_spec(name) is not None:
            continue
        sys.modules.update(build())


def _stand_in_module(name: str, **attrs) -> types.ModuleType:
    module = types.ModuleType(name, f"openrlhf_coherent stand-in for `{name}` (the package is not installed)")
    module.__spec__ = importlib.machinery.ModuleSpec(name, loader=None)  # find_spec() needs one
    module.__dict__.update(attrs)

    def __getattr__(attr):  # PEP 562: a clear message instead of a bare AttributeError
        raise AttributeError(f"{name}.{attr}: `{name}` is not installed (openrlhf_coherent import stand-in)")

    module.__getattr__ = __getattr__
    return module


@dataclass
class SamplingParams:
    """The `vllm.SamplingParams` fields OpenRLHF sets (samples_generator.py), with vLLM's defaults."""

    temperature: float = 1.0
    top_p: float = 1.0
    top_k: int = 0
    min_tokens: int = 0
    max_tokens: Optional[int] = 16
    skip_special_tokens: bool = True
    logprobs: Optional[int] = None


class TokensPrompt(TypedDict, total=False):
    prompt_token_ids: list
    multi_modal_data: dict


def _random_uuid() -> str:
    return uuid.uuid4().hex


def _vllm_stand_in() -> dict:
    # The vLLM release our `gpu` extra pins, so OpenRLHF's version gates (create_vllm_engines,
    # PolicyModelActor) take the branches they take on a GPU box.
    version = "0.29.0+openrlhf.coherent.stand.in"
    return {
        "vllm": _stand_in_module("vllm", __version__=version, SamplingParams=SamplingParams),
        "vllm.inputs": _stand_in_module("vllm.inputs", TokensPrompt=TokensPrompt),
        "vllm.utils": _stand_in_module("vllm.utils", random_uuid=_random_uuid),
    }


def _index_first_axis(x, indices):
    """Rows `indices` of `x` flattened to (total, ...) (flash_attn.bert_padding.index_first_axis)."""
    return x[indices]


def _unpad_input(hidden_states, attention_mask, unused_mask=None):
    """(batch, seqlen, ...) -> (total_tokens, ...), indices, cu_seqlens, max_seqlen, used_seqlens.

    Same contract as flash-attn >= 2.7: `unused_mask` marks tokens kept but not attended to.
    """
    import torch
    import torch.nn.functional as F

    all_masks = attention_mask + unused_mask if unused_mask is not None else attention_mask
    seqlens = all_masks.sum(dim=-1, dtype=torch.int32)
    used_seqlens = attention_mask.sum(dim=-1, dtype=torch.int32)
    indices = torch.nonzero(all_masks.flatten(), as_tuple=False).flatten()
    cu_seqlens = F.pad(torch.cumsum(seqlens, dim=0, dtype=torch.int32), (1, 0))
    flat = hidden_states.reshape(-1, *hidden_states.shape[2:])
    return _index_first_axis(flat, indices), indices, cu_seqlens, int(seqlens.max().item()), used_seqlens


def _pad_input(hidden_states, indices, batch, seqlen):
    """Inverse of `_unpad_input`: scatter (total_tokens, ...) back to (batch, seqlen, ...), zeros elsewhere."""
    import torch

    output = torch.zeros(
        batch * seqlen, *hidden_states.shape[1:], device=hidden_states.device, dtype=hidden_states.dtype
    )
    output[indices] = hidden_states
    return output.reshape(batch, seqlen, *hidden_states.shape[1:])


def _all_gather(input_, process_group):
    """Concatenate `input_` from every rank along dim 0 (flash_attn.utils.distributed.all_gather)."""
    import torch
    import torch.distributed as dist

    world_size = dist.get_world_size(process_group)
    output = torch.empty(world_size * input_.shape[0], *input_.shape[1:], dtype=input_.dtype, device=input_.device)
    dist.all_gather_into_tensor(output, input_.contiguous(), group=process_group)
    return output


def _flash_attn_stand_in() -> dict:
    from einops import rearrange  # flash_attn.bert_padding re-exports einops' rearrange

    return {
        "flash_attn": _stand_in_module("flash_attn"),
        "flash_attn.bert_padding": _stand_in_module(
            "flash_attn.bert_padding",
            index_first_axis=_index_first_axis,
            pad_input=_pad_input,
            unpad_input=_unpad_input,
            rearrange=rearrange,
        ),
        "flash_attn.utils": _stand_in_module("flash_attn.utils"),
        "flash_attn.utils.distributed": _stand_in_module("flash_attn.utils.distributed", all_gather=_all_gather),
    }


# ---------------------------------------------------------------------------------------------
# Runtime shims (CPU only)
# ---------------------------------------------------------------------------------------------


def _skip_unused_optional_imports_in_transformers() -> None:
    """transformers imports scikit-learn (with pandas) and scipy whenever they are installed, for
    features no PPO or scoring run uses: an assisted-decoding option (`assistant_confidence_threshold`)
    and the Hungarian matching of object-detection losses. Together about 3 of the ~13 CPU-seconds
    every OpenRLHF process spends importing on a 2-core machine, and a tiny CPU run starts 7-8 such
    processes. It must run before `transformers.modeling_utils` / `transformers.generation` are
    imported; it changes only what transformers itself imports: lm-eval still imports scikit-learn."""
    if "transformers.modeling_utils" in sys.modules:
        return
    import transformers.utils

    transformers.utils.is_sklearn_available = lambda: False
    transformers.utils.is_scipy_available = lambda: False


def _patch_torch_cuda() -> None:
    """OpenRLHF calls these unconditionally (launcher, ppo_actor, ppo_critic, deepspeed strategy)."""
    import torch

    # One function object per name: torch._dynamo's trace rules map each torch.cuda function
    # object to a single rule and reject an object registered under two names.
    def set_device(device):
        pass

    def synchronize(device=None):
        pass

    def empty_cache():
        pass

    def current_device():
        # OpenRLHF moves batches with `.to(torch.cuda.current_device())`: make that the CPU.
        return torch.device("cpu")

    torch.cuda.set_device = set_device
    torch.cuda.synchronize = synchronize
    torch.cuda.empty_cache = empty_cache
    torch.cuda.current_device = current_device


def _patch_replay_buffer_device() -> None:
    """NaiveReplayBuffer.__init__ builds `torch.device(f"cuda:{current_device()}")`, which the
    CPU `current_device()` above cannot format; run it with an index, then point it at the CPU."""
    import torch
    from openrlhf.trainer.ppo_utils.replay_buffer import NaiveReplayBuffer

    original_init = NaiveReplayBuffer.__init__

    @functools.wraps(original_init)
    def __init__(self, *args, **kwargs):
        cpu_current_device = torch.cuda.current_device
        torch.cuda.current_device = lambda: 0
        try:
            original_init(self, *args, **kwargs)
        finally:
            torch.cuda.current_device = cpu_current_device
        self.target_device = torch.device("cpu")

    NaiveReplayBuffer.__init__ = __init__


def _patch_deepspeed_cpu_builds() -> None:
    """Avoid DeepSpeed's two C++ JIT builds on its CPU accelerator (about 100 s the first time)."""
    import openrlhf.utils.deepspeed.deepspeed as ds_strategy

    # TorchBackend.__init__ builds the shared-memory allreduce op; without it gloo does the work.
    # (sys.modules: the attribute `deepspeed.comm.torch` is the torch package, not this module.)
    sys.modules["deepspeed.comm.torch"].build_shm_op = lambda: None

    original = ds_strategy.get_train_ds_config

    @functools.wraps(original)
    def get_train_ds_config(*args, **kwargs):
        config = original(*args, **kwargs)
        # DeepSpeed's engine pops `torch_adam` and then builds torch.optim.AdamW.
        if config.get("optimizer", {}).get("type") == "AdamW":
            config["optimizer"]["params"]["torch_adam"] = True
        return config

    ds_strategy.get_train_ds_config = get_train_ds_config


FP32 = "fp32"


def _patch_fp32_param_dtype() -> None:
    """OpenRLHF loads models only in bf16/fp16. On CPU fp32 is exact (tests compare with plain
    transformers to 1e-5) and not slower; Actor/get_llm_for_sequence_regression look this up at call time."""
    import torch
    import openrlhf.utils.utils as openrlhf_utils

    original = openrlhf_utils.convert_to_torch_dtype

    @functools.wraps(original)
    def convert_to_torch_dtype(param_dtype: str):
        return torch.float32 if param_dtype == FP32 else original(param_dtype)

    openrlhf_utils.convert_to_torch_dtype = convert_to_torch_dtype


def allow_fp32_param_dtype(parser) -> None:
    """Add "fp32" to `--ds.param_dtype`'s choices (CPU dev mode only: OpenRLHF has no fp32 path on GPUs).
    Before a Ray job's device is decided (auto), it is allowed here and refused later if the job
    runs on CUDA (`plugin.CoherentRewardPlugin.ray_init_kwargs`)."""
    if _decision == "cuda" or requested_device() == "cuda":
        return
    if _decision is None and requested_device() == "auto" and not _may_join_a_cluster() and local_device()[0] == "cuda":
        return
    for action in parser._actions:
        if "--ds.param_dtype" in action.option_strings and action.choices and FP32 not in action.choices:
            action.choices = [*action.choices, FP32]


def _may_join_a_cluster() -> bool:
    try:
        return joins_existing_cluster()
    except Exception:  # no Ray installed, a malformed RAY_ADDRESS: ray.init will say so
        return False


def _patch_rollout_engine() -> None:
    """`create_vllm_engines` reads the module global `RolloutRayActor` at call time."""
    from openrlhf.trainer.ppo_utils.samples_generator import SamplesGenerator
    from openrlhf.trainer.ray import vllm_engine

    from openrlhf_coherent.devmode.cpu_rollout import CpuRolloutActor, deterministic_dispatch, dispatch_ordered

    vllm_engine.RolloutRayActor = CpuRolloutActor
    if not hasattr(SamplesGenerator._dispatch_prompts_to_vllm, "__wrapped__"):
        SamplesGenerator._dispatch_prompts_to_vllm = deterministic_dispatch(SamplesGenerator._dispatch_prompts_to_vllm)
        SamplesGenerator._generate_vllm = dispatch_ordered(SamplesGenerator._generate_vllm)


def _patch_weight_sync() -> None:
    from openrlhf.trainer.ray.ppo_actor import ActorPPOTrainer

    # Called from ActorPPOTrainer.__init__ to open a vLLM NCCL group; the object store needs none.
    ActorPPOTrainer._init_vllm_sync_group = lambda self, backend: None
    ActorPPOTrainer.broadcast_to_vllm = _broadcast_to_cpu_engines


def _patch_policy_update_threads() -> None:
    """`ActorPPOTrainer.ppo_train` (the policy's forward, backward and AdamW steps) with every core
    this worker may use (`usable_cores`), shared among the policy's ranks, when the driver asked for it: every other phase
    runs in several Ray workers at once, one thread each, but during the update the other roles
    wait. Measured in `benchmarks.vs_trl` (2 cores): ppo_train 1.84 and 2.09 s / 100 samples with
    one thread, 1.47 with this (one run each; the machine's noise is about 20%)."""
    if os.environ.get(POLICY_UPDATE_THREADS_ENV) != "all_cores":
        return
    import torch
    import torch.distributed as dist
    from openrlhf.trainer.ray.ppo_actor import ActorPPOTrainer

    original = ActorPPOTrainer.ppo_train

    @functools.wraps(original)
    def ppo_train(self, *args, **kwargs):
        ranks = dist.get_world_size() if dist.is_initialized() else 1
        threads = torch.get_num_threads()
        torch.set_num_threads(max(1, usable_cores() // ranks))
        try:
            return original(self, *args, **kwargs)
        finally:
            torch.set_num_threads(threads)

    ActorPPOTrainer.ppo_train = ppo_train


def _broadcast_to_cpu_engines(self) -> None:
    """Stand-in for `ActorPPOTrainer.broadcast_to_vllm`: rank 0 sends the full state dict to every
    CPU rollout engine through the Ray object store. Under ZeRO-3 all ranks gather first."""
    import deepspeed
    import ray
    import torch.distributed as dist

    model = self.actor.model.module  # the HF model inside the DeepSpeed engine
    named = list(model.named_parameters())
    is_rank_0 = dist.get_rank() == 0
    with deepspeed.zero.GatheredParameters([p for _, p in named], enabled=self.strategy.args.ds.zero_stage == 3):
        # Clone: a gathered ZeRO-3 buffer is released when the context exits.
        state = {name: p.data.detach().clone() for name, p in named} if is_rank_0 else None
    if is_rank_0:
        state_ref = ray.put(state)
        ray.get([engine.load_weights.remote(state_ref) for engine in self.vllm_engines])
    dist.barrier()
