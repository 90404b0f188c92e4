"""lm-eval's own IFEval instruction checkers, imported so that they work without network.

`lm_eval.tasks.ifeval.instructions_util` calls `nltk.download("punkt_tab")` at import time when
NLTK's `punkt_tab` data is missing (no PyPI package ships it). Without network that download
fails after a DNS/connection attempt and prints a misleading "Downloaded punkt_tab on rank 0".
Only two checkers need `punkt_tab` (`length_constraints:number_sentences` and
`change_case:capital_word_frequency`, through `nltk.sent_tokenize` / `nltk.word_tokenize`); this
demo uses none of them, so the import below swaps `nltk.download` for a no-op for the duration of
the import: no network is touched, and a run gives the same result on- or offline. The checkers
used here only use regular expressions, `json`, NLTK's `RegexpTokenizer` (word counts) and
`langdetect` (whose profiles ship in its wheel); `langdetect` is made deterministic (its
`DetectorFactory.seed`, otherwise random per call).

Needs `langdetect` and `immutabledict` (lm-eval's `ifeval` extra; pinned in requirements/cpu.txt).
"""

from __future__ import annotations

import contextlib
import io
from typing import Dict, Optional, Tuple

# Checkers that do not need NLTK's punkt_tab data (checked by tests/test_demo_real.py).
OFFLINE_SAFE = (
    "change_case:english_lowercase",
    "change_case:english_capital",
    "detectable_format:number_bullet_lists",
    "startend:end_checker",
    "punctuation:no_comma",
    "detectable_content:postscript",
    "detectable_format:json_format",
    "detectable_format:title",
    "length_constraints:number_words",
)

_REGISTRY = None


def registry() -> Dict[str, type]:
    """lm-eval's `INSTRUCTION_DICT` (instruction id -> checker class), imported without network."""
    global _REGISTRY
    if _REGISTRY is None:
        import langdetect
        import nltk

        download = nltk.download
        nltk.download = lambda *args, **kwargs: False  # see the module docstring
        try:
            # its unconditional "Downloaded punkt_tab on rank 0" would be false: silenced
            with contextlib.redirect_stdout(io.StringIO()):
                from lm_eval.tasks.ifeval import instructions_registry
        except ImportError as e:
            raise ImportError(
                f"{e}. demo_real uses lm-eval's IFEval checkers, which need lm-eval's ifeval extra: "
                "pip install langdetect==1.0.9 immutabledict==4.3.1 (make venv installs them)"
            ) from e
        finally:
            nltk.download = download
        langdetect.DetectorFactory.seed = 0  # deterministic language detection
        _REGISTRY = instructions_registry.INSTRUCTION_DICT
    return _REGISTRY


def _checker(instruction_id: str, kwargs: Dict):
    if instruction_id not in OFFLINE_SAFE:
        raise ValueError(f"{instruction_id} is not one of this demo's offline-safe checkers {OFFLINE_SAFE}")
    checker = registry()[instruction_id](instruction_id)
    description = checker.build_description(**kwargs)
    return checker, description


def describe(instruction_id: str, kwargs: Optional[Dict] = None) -> str:
    """The instruction's text exactly as IFEval words it (`build_description`)."""
    return _checker(instruction_id, dict(kwargs or {}))[1]


def follows(instruction_id: str, kwargs: Optional[Dict], response: str) -> bool:
    """IFEval's strict test for one instruction (`test_instruction_following_strict`): a non-empty
    response that the checker accepts."""
    checker, _ = _checker(instruction_id, dict(kwargs or {}))
    return bool(response.strip()) and bool(checker.check_following(response))


def grade(instruction_id: str, kwargs: Optional[Dict], response: str, finished: bool = True) -> Tuple[bool, str]:
    """(ok, reason): reason "truncated" (no EOS within the token limit: counted wrong whatever the
    text), "not_followed" or "ok"."""
    if not finished:
        return False, "truncated"
    if not follows(instruction_id, kwargs, response):
        return False, "not_followed"
    return True, "ok"
