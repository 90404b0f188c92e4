"""Put on a child process's PYTHONPATH by `launch.with_cpu_site` for stock OpenRLHF CLIs on a machine without CUDA:
Python imports `sitecustomize` at start-up, so the CPU dev mode (import stand-ins for vllm/flash_attn,
torch.cuda no-ops, torch AdamW instead of DeepSpeed's JIT-built CPU Adam) is active before OpenRLHF loads.

Ray's own service processes (log monitor, dashboard and runtime-env agents) inherit PYTHONPATH too but
never load OpenRLHF; applying the dev mode there costs ~7 s of CPU each (it imports torch, DeepSpeed
and OpenRLHF), which on a 2-core machine doubled a tiny run's start-up. Ray's workers still get it."""

import os
import sys


def _is_ray_service() -> bool:
    script = next((arg for arg in sys.orig_argv[1:] if not arg.startswith("-")), "")
    return f"{os.sep}ray{os.sep}" in script and not script.endswith("default_worker.py")


if not _is_ray_service():
    from openrlhf_coherent import devmode

    devmode.apply()
