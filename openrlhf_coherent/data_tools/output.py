"""Output files: the append-only, resumable stream of scored rows, and whole-file results.

A scored stream is written row by row as batches finish, each row carrying its input `line`.
A re-run reads the lines already there and scores only the rest, appending: finished rows are
never rewritten. Each row goes out in one write + flush, so an interrupted run leaves at most one
unfinished last line; that partial line (no trailing newline) is the only thing ever cut off, and
only after every complete line was checked to be a row of this tool (a file we did not write is
never touched). Rows may carry `scored_by`, the identities of the models that scored them; a
resume with other models is refused rather than mixing two models' scores in one file. The
stream is locked (`files.exclusive_lock`) from before it is read until it is closed: a second run
on the same output refuses instead of appending its rows among ours.
"""

from __future__ import annotations

import os
from typing import Callable, Iterable, List, Optional, Sequence, Set

from openrlhf_coherent.config import ConfigError
from openrlhf_coherent.files import dumps, exclusive_lock, loads, replace_atomically


class ScoredStream:
    """Append scored rows to `path` (given by `flag`); `done_lines` are the input lines it already holds.

    `required_keys`: what every row of this tool has; an existing file whose rows lack them is not
    ours and is refused before anything is cut or appended. `expected_stamp(row)`: the `scored_by`
    this run would write for that row (None: not checked)."""

    def __init__(
        self,
        path: str,
        flag: str,
        required_keys: Sequence[str],
        expected_stamp: Optional[Callable[[dict], Optional[dict]]] = None,
    ):
        self.path, self.flag = path, flag
        self.done_lines: Set[int] = set()
        self._created = not os.path.exists(path)
        os.makedirs(os.path.dirname(os.path.abspath(path)), exist_ok=True)
        self._file = open(path, "a", encoding="utf-8")
        self._lock = exclusive_lock(self._file, path, flag)
        try:
            self._lock.__enter__()
        except ConfigError:
            self._file.close()  # another run holds it: leave its file alone (never unlink it)
            raise
        try:
            for number, row in self._existing_rows(required_keys):
                expected = expected_stamp(row) if expected_stamp else None
                if expected is not None and not same_stamp(row.get("scored_by"), expected):
                    raise ConfigError(
                        f"{flag} {path}: line {number} was scored by {row.get('scored_by') or 'unrecorded models'}, "
                        f"this run scores with {expected}: resuming would mix two models' scores in one file; "
                        f"use the same models or another {flag}"
                    )
                self.done_lines.add(row["line"])
            self._drop_partial_last_line()
        except BaseException:
            self.close(failed=True)
            raise

    def _existing_rows(self, required_keys: Sequence[str]):
        with open(self.path, "rb") as f:
            lines = f.read().split(b"\n")
        found = 0
        for number, raw in enumerate(lines[:-1], start=1):  # the last piece is partial (or empty)
            if not raw.strip():
                continue
            try:
                row = loads(raw.decode("utf-8"))
            except ValueError:
                row = None
            if not isinstance(row, dict) or not isinstance(row.get("line"), int) or any(k not in row for k in required_keys):
                raise ConfigError(
                    f"{self.flag} {self.path}: line {number} is not a row this tool writes (needs `line` and "
                    f"{', '.join(required_keys)}); it was not written by this tool, so it is left untouched: "
                    f"choose another {self.flag}"
                )
            found += 1
            yield number, row
        if lines[-1].strip() and not found:
            raise ConfigError(
                f"{self.flag} {self.path}: holds no complete row of this tool, so it is left untouched: "
                f"choose another {self.flag} (or delete it if a run of this tool was killed on its first row)"
            )

    def _drop_partial_last_line(self) -> None:
        with open(self.path, "rb+") as f:
            data = f.read()
            if data and not data.endswith(b"\n"):
                f.truncate(data.rfind(b"\n") + 1)

    def write(self, row: dict) -> None:
        self._file.write(dumps(row) + "\n")
        self._file.flush()
        self.done_lines.add(row["line"])

    def __enter__(self) -> "ScoredStream":
        return self

    def __exit__(self, exc_type, exc, tb) -> None:
        self.close(failed=exc_type is not None)

    def close(self, failed: bool = False) -> None:
        """Release the lock and close. A run that `failed` before writing a row to a file it
        created removes it: a failure leaves no empty output behind."""
        if self._file.closed:
            return
        if failed and self._created and os.path.getsize(self.path) == 0:
            os.unlink(self.path)
        self._lock.__exit__(None, None, None)
        self._file.close()


def same_stamp(recorded, expected: dict) -> bool:
    """Same models: each role's weights fingerprint matches (a moved folder is the same model)."""
    if not isinstance(recorded, dict) or recorded.keys() != expected.keys():
        return False
    return all(isinstance(recorded[k], dict) and recorded[k].get("sha") == expected[k].get("sha") for k in expected)


def read_rows(path: str) -> List[dict]:
    """Every row of a JSONL file we wrote (strict JSON: a NaN there is an error naming the line)."""
    rows = []
    with open(path, encoding="utf-8") as f:
        for number, text in enumerate(f, start=1):
            if text.strip():
                try:
                    rows.append(loads(text))
                except ValueError as e:
                    raise ConfigError(f"{path}: line {number}: {e}") from None
    return rows


def check_derived_output(path: str, flag: str) -> None:
    """A whole-file output is rewritten on every run; an existing one must be ours (JSON rows with
    the input `line`, as every derived file of these tools has), else it is refused, untouched."""
    if not os.path.isfile(path):
        return
    with open(path, encoding="utf-8", errors="replace") as f:
        for number, text in enumerate(f, start=1):
            if not text.strip():
                continue
            try:
                row = loads(text)
            except ValueError:
                row = None
            if not isinstance(row, dict) or "line" not in row:
                raise ConfigError(
                    f"{flag} {path}: exists and line {number} is not a row these tools write; it is left "
                    f"untouched: choose another {flag} (or delete the file)"
                )


def write_rows(path: str, rows: Iterable[dict]) -> None:
    """Write a derived file (a selection) whole (`files.replace_atomically`): a reader never sees
    half of it. It is recomputed from the scored stream on every run."""
    with replace_atomically(path) as f:
        for row in rows:
            f.write(dumps(row) + "\n")
