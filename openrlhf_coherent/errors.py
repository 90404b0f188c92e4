"""The one error type for bad input, and how every CLI reports it.

Its own module so that the modules `config` uses (`remote_code`, `files`, `numeric`, `redact`) can
raise it without importing `config`, which imports them.
"""

from __future__ import annotations

import sys
from typing import Callable


class ConfigError(ValueError):
    """A bad flag or input file, found before Ray starts where possible (a bad row may show up later).
    The CLIs print it as one line and exit with status 2 (`exit_status`)."""


def exit_status(command: Callable[[], object]) -> int:
    """Run a command's body. Bad input raises ConfigError naming the flag, file or line; it is
    printed as one line on stderr and becomes exit status 2, the way every CLI here reports it."""
    try:
        command()
    except ConfigError as e:
        from .redact import mask_text  # a message may quote a value that holds a secret

        print(f"openrlhf_coherent: error: {mask_text(str(e))}", file=sys.stderr)
        return 2
    return 0
