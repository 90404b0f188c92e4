"""How our entry points start stock OpenRLHF DeepSpeed CLIs (train_sft, train_dpo, and our wrappers
of them) as one plain process, without the `deepspeed` launcher, on a laptop or in a test.

Two things are needed: torch.distributed's rendezvous variables (DeepSpeed's init_distributed
reads them; a free port, since other runs on the machine may hold 29500), and, on a machine
without CUDA, the CPU dev mode active before OpenRLHF is imported. A child process gets the latter
through `cpu_site/sitecustomize.py` on its PYTHONPATH, which Python imports at start-up.
"""

from __future__ import annotations

import os
import socket
from typing import Dict, Optional

CPU_SITE = os.path.join(os.path.dirname(os.path.abspath(__file__)), "cpu_site")


def free_port() -> int:
    """A TCP port free right now."""
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def single_process_env() -> Dict[str, str]:
    """Rendezvous variables for a one-rank job on this machine."""
    return {"MASTER_ADDR": "127.0.0.1", "MASTER_PORT": str(free_port()), "RANK": "0", "LOCAL_RANK": "0",
            "WORLD_SIZE": "1", "LOCAL_WORLD_SIZE": "1"}  # fmt: skip


def make_single_process() -> None:
    """In this process: a one-rank job, unless a launcher already set the rank."""
    if "RANK" not in os.environ and "LOCAL_RANK" not in os.environ:
        os.environ.update(single_process_env())


def with_cpu_site(pythonpath: Optional[str]) -> str:
    """PYTHONPATH for a child process that must run OpenRLHF in the CPU dev mode."""
    return os.pathsep.join(p for p in (CPU_SITE, pythonpath) if p)
