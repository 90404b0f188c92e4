"""Our training CLIs run OpenRLHF's own CLI module (`runpy`, as `python -m` would) with a few of its
attributes swapped for the duration: a parser hook, a dataset or trainer subclass. Swapping
rather than copying keeps every OpenRLHF flag and code path; restoring keeps the process clean."""

import contextlib
from typing import Iterator


@contextlib.contextmanager
def replaced(owner, name: str, value) -> Iterator[None]:
    """`owner.name = value` inside the block, the original back afterwards."""
    original = getattr(owner, name)
    setattr(owner, name, value)
    try:
        yield
    finally:
        setattr(owner, name, original)
