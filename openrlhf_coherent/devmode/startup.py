"""Process start-up: import torch, transformers, DeepSpeed and OpenRLHF with the cyclic garbage
collector paused.

Every process of a run (the driver, each Ray role worker, a DeepSpeed SFT process) imports these
packages before it does any work, and on a CPU those imports, not the training, are most of a small
run: about 10 CPU-seconds per process on the 2-core machine, 6-7 processes per PPO run. The imports
allocate about a million objects that live as long as the process, and the collector, triggered by
net allocations, keeps walking the young ones (and now and then the whole heap) while they load,
finding next to no garbage. `python -m benchmarks.startup_imports` measures one role worker's
start-up with and without the pause. Nothing here depends on the device.

Not `gc.freeze()` after the imports: cyclic garbage among frozen objects is never collected, and in
a process that has already connected to Ray (the driver decides its device over a probe connection
first) the remains of that connection would be frozen with the rest. A job driver once hung at
exit in Ray's exit handlers in a run with the freeze; the freeze is not proven to be the cause.
"""

from __future__ import annotations

import contextlib
import gc
from typing import Iterator


@contextlib.contextmanager
def imports_without_gc() -> Iterator[None]:
    """Run a block of imports with the cyclic collector paused, then restore its previous state
    (the collector runs again as usual; whatever cyclic garbage the imports left, it collects)."""
    was_enabled = gc.isenabled()
    gc.disable()
    try:
        yield
    finally:
        if was_enabled:
            gc.enable()
