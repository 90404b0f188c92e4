"""Output files: the append-only, resumable stream of scored rows, and whole-file results.

A scored stream is written row by row as batches finish, each row carrying its input `line`.
A re-run reads the lines already there and scores only the rest, appending: finished rows are
never rewritten. Each row goes out in one write + flush, so an interrupted run leaves at most one
unfinished last line; that partial line (no trailing newline) is the only thing ever cut off.
"""

from __future__ import annotations

import json
import os
from typing import Iterable, List, Set


class ScoredStream:
    """Append scored rows to `path`; `done_lines` are the input lines it already holds."""

    def __init__(self, path: str):
        self.path = path
        self.done_lines: Set[int] = set()
        if os.path.exists(path):
            self._drop_partial_last_line()
            for row in read_rows(path):
                self.done_lines.add(row["line"])
        os.makedirs(os.path.dirname(os.path.abspath(path)), exist_ok=True)
        self._file = open(path, "a", encoding="utf-8")

    def _drop_partial_last_line(self) -> None:
        with open(self.path, "rb+") as f:
            data = f.read()
            if data and not data.endswith(b"\n"):
                f.truncate(data.rfind(b"\n") + 1)

    def write(self, row: dict) -> None:
        self._file.write(json.dumps(row, ensure_ascii=False) + "\n")
        self._file.flush()
        self.done_lines.add(row["line"])

    def close(self) -> None:
        self._file.close()


def read_rows(path: str) -> List[dict]:
    with open(path, encoding="utf-8") as f:
        return [json.loads(text) for text in f if text.strip()]


def write_rows(path: str, rows: Iterable[dict]) -> None:
    """Write a derived file (a selection) whole: to a temporary name, then renamed, so a reader
    never sees half of it. It is recomputed from the scored stream on every run."""
    tmp = f"{path}.tmp"
    os.makedirs(os.path.dirname(os.path.abspath(path)), exist_ok=True)
    with open(tmp, "w", encoding="utf-8") as f:
        for row in rows:
            f.write(json.dumps(row, ensure_ascii=False) + "\n")
    os.replace(tmp, path)
