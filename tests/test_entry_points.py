"""`python -m openrlhf_coherent` lists the package's entry points: every one it lists exists, and
every command module under openrlhf_coherent/cli/ is listed (a new tool cannot be left out)."""

import ast
import importlib.util
import pathlib
import subprocess
import sys

from openrlhf_coherent.__main__ import ENTRY_POINTS

ROOT = pathlib.Path(__file__).resolve().parents[1]
LISTED = [module for _, group in ENTRY_POINTS for module, _ in group]


def _runs_as_main(path: pathlib.Path) -> bool:
    """Whether the file has an `if __name__ == "__main__":` block (a `python -m` command)."""
    for node in ast.parse(path.read_text(encoding="utf-8")).body:
        if isinstance(node, ast.If) and "__main__" in ast.unparse(node.test) and "__name__" in ast.unparse(node.test):
            return True
    return False


def test_every_listed_module_exists_and_is_a_command():
    assert len(LISTED) == len(set(LISTED)), "a module is listed twice"
    for module in LISTED:
        spec = importlib.util.find_spec(module)  # imports only the parent packages
        assert spec is not None and spec.origin, f"{module} is listed but does not exist"
        assert _runs_as_main(pathlib.Path(spec.origin)), f"{module} is listed but has no __main__ block"


def test_every_cli_module_is_listed():
    commands = {
        f"openrlhf_coherent.cli.{path.stem}"
        for path in (ROOT / "openrlhf_coherent" / "cli").glob("*.py")
        if _runs_as_main(path)
    }
    assert len(commands) >= 12  # the scan itself works
    missing = sorted(commands - set(LISTED))
    assert not missing, f"not listed by `python -m openrlhf_coherent`: {missing}"


def test_python_m_prints_one_line_per_entry_point():
    out = subprocess.run(
        [sys.executable, "-m", "openrlhf_coherent"], cwd=ROOT, capture_output=True, text=True, timeout=60, check=True
    ).stdout
    for module in LISTED:
        lines = [line for line in out.splitlines() if line.split()[:1] == [module]]
        assert len(lines) == 1, f"{module}: expected one line, got {lines}"
        assert len(lines[0].split()) > 2, f"{module}: no description"
