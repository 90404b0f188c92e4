"""Process start-up: import torch, transformers, DeepSpeed and OpenRLHF with the cyclic garbage
collector paused.

Every process of a run (the driver, each Ray role worker, a DeepSpeed SFT process) imports these
packages before it does any work, and on a CPU those imports, not the training, are most of a small
run: ~10 CPU-seconds per process on the 2-core machine, 6-7 processes per PPO run
(benchmarks/startup_imports.py). The imports allocate about a million objects that live as long as
the process, and the collector, which runs every 700 net allocations, walks the growing heap again
and again while they load: a quarter of the import time goes to collections that find next to no
garbage. Pausing it for the imports and then freezing what they built (`gc.freeze`: the permanent
generation, which later collections skip, so the training's own collections stay small) removes that
cost. Nothing here depends on the device.
"""

from __future__ import annotations

import contextlib
import gc
from typing import Iterator


@contextlib.contextmanager
def imports_without_gc() -> Iterator[None]:
    """Run a block of imports with the cyclic collector paused; then freeze everything allocated so
    far and restore the collector's previous state. The little cyclic garbage that imports leave
    behind stays until the process exits (frozen objects are never collected)."""
    was_enabled = gc.isenabled()
    gc.disable()
    try:
        yield
    finally:
        gc.freeze()
        if was_enabled:
            gc.enable()
