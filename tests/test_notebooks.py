"""The example notebooks, executed top to bottom with nbclient (the python3 kernel of this venv).

quickstart_cpu.ipynb runs once (module fixture): tiny models, SFT + PPO through
examples/scripts/srppo_single_node.sh with the tiny CPU recipe (real DeepSpeed, real Ray, real
OpenRLHF: this is also the single-node script's tiny CPU run), coherent-reward scoring, curves.
read_run_logs.ipynb then reads that run's folder, so the suite trains only once here.
"""

import json
import os
import re
import sys

import nbformat
import pytest
from nbclient import NotebookClient

from conftest import plain_coherent_reward

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
NOTEBOOKS = os.path.join(REPO, "examples", "notebooks")


def execute(name, parameters, save_as):
    """Run a notebook like papermill does: a cell with the given values goes right after the cell
    tagged "parameters". The kernel starts in examples/notebooks, like a user's would. The
    executed notebook is saved (outputs included) for debugging."""
    nb = nbformat.read(os.path.join(NOTEBOOKS, name), as_version=4)
    index = next(i for i, c in enumerate(nb.cells) if "parameters" in c.metadata.get("tags", []))
    source = "\n".join(f"{k} = {v!r}" for k, v in parameters.items())
    nb.cells.insert(index + 1, nbformat.v4.new_code_cell(source, metadata={"tags": ["injected-parameters"]}))
    client = NotebookClient(
        nb, timeout=900, startup_timeout=300, kernel_name="python3", resources={"metadata": {"path": NOTEBOOKS}}
    )
    try:
        client.execute()
    finally:
        nbformat.write(nb, str(save_as))
    return nb


def outputs(nb, kind):
    """All stream text, or the number of PNG images, over the notebook's cells."""
    if kind == "text":
        return "".join(o.get("text", "") for c in nb.cells if c.cell_type == "code" for o in c.outputs)
    return sum("image/png" in o.get("data", {}) for c in nb.cells if c.cell_type == "code" for o in c.outputs)


@pytest.fixture(scope="module")
def quickstart(tmp_path_factory):
    run_dir = tmp_path_factory.mktemp("quickstart")
    nb = execute("quickstart_cpu.ipynb", {"RUN_DIR": str(run_dir)}, run_dir / "executed_quickstart.ipynb")
    return run_dir, nb


def test_quickstart_trains_scores_and_plots(quickstart):
    run_dir, nb = quickstart
    recipe = run_dir / "recipe"
    # Both stages finished and saved a model; PPO logged rollouts and TensorBoard events.
    for model in ("sft", "ppo"):
        assert (recipe / model / "config.json").exists(), f"stage {model} saved no model"
    rollouts = [json.loads(line) for line in open(recipe / "rollouts.jsonl")]
    assert {r["step"] for r in rollouts} == {1, 2} and len(rollouts) == 8  # 2 PPO steps x 4 prompts
    assert list((recipe / "tensorboard" / "ppo").rglob("events.out.tfevents.*"))  # OpenRLHF adds a run subfolder
    assert outputs(nb, "png") == 1 and (run_dir / "training_curves.png").exists()
    assert "the sun is yellow ." in outputs(nb, "text")
    # The kernel ran this venv's interpreter (jupyter_client starts the "python3" kernel with
    # sys.executable). normpath, not realpath: a venv's python is a symlink to the base interpreter.
    kernel_python = re.search(r"^python: (.+)$", outputs(nb, "text"), re.M).group(1)
    assert os.path.normpath(kernel_python) == os.path.normpath(sys.executable)


def test_quickstart_scores_are_the_coherent_reward(quickstart):
    """The notebook's scores equal log p_SFT - log p_base recomputed with plain transformers."""
    run_dir, _ = quickstart
    scores = json.loads((run_dir / "scores.json").read_text())
    assert len(scores) == 4
    for row in scores:
        expected = plain_coherent_reward(
            str(run_dir / "recipe" / "sft"), str(run_dir / "base"), row["prompt_ids"], row["response_ids"]
        )
        assert row["coherent reward"] == pytest.approx(expected, abs=1e-4)


def test_read_run_logs_on_the_quickstart_run(quickstart, tmp_path):
    run_dir, _ = quickstart
    nb = execute("read_run_logs.ipynb", {"RUN_DIR": str(run_dir)}, tmp_path / "executed_read_run_logs.ipynb")
    text = outputs(nb, "text")
    for metric in ("reward_mean", "reward_std", "sft_logp_per_token", "base_logp_per_token", "response_length_mean",
                   "truncated_rate"):  # fmt: skip
        assert re.search(rf"recipe/tensorboard/ppo/\S+: train/coherent/{metric} +-?\d+\.\d{{4}}  \(2 steps\)", text), metric
    n_rollouts = sum(1 for _ in open(run_dir / "recipe" / "rollouts.jsonl"))
    assert f"{n_rollouts} responses from 1 file(s)" in text
    assert outputs(nb, "png") == 2  # the metric panels and the rollout-log figure


def test_read_run_logs_names_a_missing_run_dir(tmp_path):
    from nbclient.exceptions import CellExecutionError

    with pytest.raises(CellExecutionError, match="no TensorBoard event files under"):
        execute("read_run_logs.ipynb", {"RUN_DIR": str(tmp_path)}, tmp_path / "executed.ipynb")
