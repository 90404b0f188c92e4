"""The embedded demo's --quick mode: every stage runs through the real stack and writes its outputs."""

import json
import os
import subprocess
import sys


def test_demo_quick_produces_every_output(tmp_path):
    out = tmp_path / "demo"
    proc = subprocess.run(
        [sys.executable, "-m", "demo.run", "--out", str(out), "--quick"],
        capture_output=True, text=True, timeout=600,
        cwd=os.path.dirname(os.path.dirname(os.path.abspath(__file__))),
    )  # fmt: skip
    assert proc.returncode == 0, (proc.stdout + proc.stderr)[-4000:]
    results = json.loads((out / "results.json").read_text())
    assert set(results["summary"]) == {"base", "SFT", "SFT extended", "SRPPO", "PPO with checker reward"}
    for name, evals in results["per_seed"].items():
        assert 0.0 <= evals[0]["accuracy"] <= 1.0, name
    for name, steps in results["curves"].items():
        assert [s["step"] for s in steps] == [1, 2], name
        assert all(s["task_accuracy"] is not None for s in steps), name
    assert (out / "results.md").read_text().startswith("Held-out accuracy")
    assert (out / "training_curves.png").stat().st_size > 10_000
    assert "| SRPPO |" in proc.stdout  # the table is printed on the console
    for stage in ("pretrain base", "SFT seed 0", "SRPPO seed 0", "PPO with checker reward seed 0"):
        assert f"[demo] {stage} done in" in proc.stdout
