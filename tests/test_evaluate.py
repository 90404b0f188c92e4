"""`python -m openrlhf_coherent.cli.evaluate`: lm-evaluation-harness on a tiny local model, no network.

The real command runs once (module fixture) on two local tasks shaped like the paper's
(tests/data/lm_eval_tasks: a gsm8k-like generate_until task with regex filters and few-shot
examples, a gpqa-like multiple-choice task), through lm-eval's real Hugging Face backend.
"""

import glob
import json
import os
import subprocess
import sys

import pytest
import torch

from conftest import plain_log_probs
from openrlhf_coherent.config import ConfigError
from openrlhf_coherent.lm_eval_tasks.table import paper_summary, result_rows, to_markdown
from openrlhf_coherent.lm_eval_tasks.tasks import PAPER_TASKS, TaskSpec, check_tasks, group_by_fewshot, parse_task_specs

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
TASKS_DIR = os.path.join(REPO, "tests", "data", "lm_eval_tasks")
LIMIT = 5


@pytest.fixture(scope="module")
def evaluated(tiny_models, tmp_path_factory):
    _, sft = tiny_models
    out = tmp_path_factory.mktemp("evaluate") / "results.md"
    argv = [
        "--model", sft, "--output", str(out), "--tasks", "tiny_qa_gen:2,tiny_qa_mc", "--include_path", TASKS_DIR,
        "--device", "cpu", "--batch_size", "2", "--limit", str(LIMIT),
    ]  # fmt: skip
    env = dict(os.environ, HF_HUB_OFFLINE="1", HF_DATASETS_OFFLINE="1", TOKENIZERS_PARALLELISM="false")
    proc = subprocess.run(
        [sys.executable, "-m", "openrlhf_coherent.cli.evaluate", *argv],
        cwd=str(out.parent),  # the task data must not depend on the working directory
        env=env, capture_output=True, text=True, timeout=400,
    )  # fmt: skip
    assert proc.returncode == 0, proc.stderr[-3000:]
    return sft, out, json.loads(out.with_suffix(".json").read_text())


def test_results_table_has_every_metric_row(evaluated):
    _, out, report = evaluated
    rows = {(r["task"], r["metric"], r["filter"]): r for r in report["rows"]}
    assert set(rows) == {
        ("tiny_qa_gen", "exact_match", "strict-match"),
        ("tiny_qa_gen", "exact_match", "flexible-extract"),
        ("tiny_qa_mc", "acc", "none"),
        ("tiny_qa_mc", "acc_norm", "none"),
    }
    for r in rows.values():
        assert 0.0 <= r["value"] <= 1.0 and r["samples"] == LIMIT
    # The few-shot spec reached lm-eval; the other task kept its default (0).
    assert rows["tiny_qa_gen", "exact_match", "strict-match"]["num_fewshot"] == 2
    assert rows["tiny_qa_mc", "acc", "none"]["num_fewshot"] == 0
    markdown = out.read_text()
    for task, metric, filter_name in rows:
        assert f"| {task} | {metric} | {filter_name} |" in markdown
    assert "--limit 5: a smoke test" in markdown


def test_multiple_choice_accuracy_matches_plain_transformers(evaluated):
    """The table's acc is the model's: argmax over choices of log p(" choice" | prompt), recomputed
    here with plain transformers in fp32 on the same documents."""
    from transformers import AutoTokenizer

    sft, _, report = evaluated
    tok = AutoTokenizer.from_pretrained(sft)
    docs = [json.loads(line) for line in open(os.path.join(TASKS_DIR, "tiny_qa.jsonl"))]
    docs = [d for d in docs if d["split"] == "test"][:LIMIT]
    correct = 0
    for d in docs:
        context = f"question : {d['question']} answer :"
        context_ids = tok(context)["input_ids"]
        scores = []
        for choice in d["choices"]:
            whole = tok(context + " " + choice)["input_ids"]
            assert whole[: len(context_ids)] == context_ids
            scores.append(plain_log_probs(sft, context_ids, whole[len(context_ids) :]).sum().item())
        correct += int(torch.tensor(scores).argmax().item() == d["label"])
    acc = next(r["value"] for r in report["rows"] if r["task"] == "tiny_qa_mc" and r["metric"] == "acc")
    assert acc == pytest.approx(correct / len(docs))


def run_in_process(capsys, *argv):
    """The CLI's error paths, in this process (no interpreter start-up): exit status and stderr."""
    from openrlhf_coherent.cli import evaluate as cli

    try:
        code = cli.main(list(argv))
    except SystemExit as e:  # argparse's own usage errors
        code = e.code
    return code, capsys.readouterr().err


def test_unknown_task_fails_before_loading_the_model(tiny_models, tmp_path, capsys):
    _, sft = tiny_models
    code, err = run_in_process(capsys, "--model", sft, "--output", str(tmp_path / "r.md"), "--tasks", "gsm8kk")
    assert code == 2 and "--tasks gsm8kk: not an lm-eval task" in err and "gsm8k" in err.split("did you mean")[1]
    assert not (tmp_path / "r.md").exists()


def test_ifeval_without_punkt_tab_says_what_it_needs_before_loading(tiny_models, tmp_path, capsys, monkeypatch):
    """No network here: without NLTK's punkt_tab data, --tasks ifeval stops with the recipe to get it."""
    _, sft = tiny_models
    monkeypatch.setenv("NLTK_DATA", str(tmp_path / "no_nltk_data"))
    import nltk

    monkeypatch.setattr(nltk.data, "path", [str(tmp_path / "no_nltk_data")])
    code, err = run_in_process(capsys, "--model", sft, "--output", str(tmp_path / "r.md"), "--tasks", "ifeval")
    assert code == 2 and "punkt_tab" in err and "NLTK_DATA" in err
    assert not (tmp_path / "r.md").exists()


def test_bad_model_path_and_limit_name_the_flag(tmp_path, capsys):
    code, err = run_in_process(capsys, "--model", str(tmp_path / "missing"), "--output", str(tmp_path / "r.md"))
    assert code == 2 and "--model" in err and "no such directory" in err
    code, err = run_in_process(capsys, "--model", str(tmp_path), "--output", str(tmp_path / "r.md"), "--limit", "0")
    assert code == 2 and "--limit must be > 0" in err


def test_task_specs():
    assert parse_task_specs("paper") == parse_task_specs(PAPER_TASKS)
    assert parse_task_specs("paper")[:2] == [TaskSpec("ifeval", None), TaskSpec("gsm8k", 5)]
    assert parse_task_specs("a:3, b") == [TaskSpec("a", 3), TaskSpec("b", None)]
    assert group_by_fewshot(parse_task_specs("a:3,b,c:3")) == {3: ["a", "c"], None: ["b"]}
    for bad, message in (("a:x", "few-shot"), ("", "empty"), ("gsm8k,gsm8k:5", "more than once")):
        with pytest.raises(ConfigError, match=message):
            parse_task_specs(bad)
    with pytest.raises(ConfigError, match="did you mean gsm8k"):
        check_tasks([TaskSpec("gsm8kk", None)], ["gsm8k", "ifeval"])


def test_paper_tasks_exist_in_installed_lm_eval():
    """The preset's names are lm-eval 0.4.13 task names (read from its task YAMLs, no index build)."""
    import lm_eval

    root = os.path.join(os.path.dirname(lm_eval.__file__), "tasks")
    names = set()
    for path in glob.glob(os.path.join(root, "**", "*.yaml"), recursive=True):
        for line in open(path):
            if line.startswith("task:"):
                names.add(line.split(":", 1)[1].strip())
    assert {s.name for s in parse_task_specs("paper")} <= names


def test_paper_columns_from_lm_eval_shaped_results():
    """The headline columns pick the paper's metrics out of lm-eval's "metric,filter" keys."""
    results = {
        "results": {
            "ifeval": {"alias": "ifeval", "inst_level_loose_acc,none": 0.5, "inst_level_loose_acc_stderr,none": "N/A",
                       "inst_level_strict_acc,none": 0.4, "prompt_level_loose_acc,none": 0.3},
            "gsm8k": {"exact_match,strict-match": 0.25, "exact_match_stderr,strict-match": 0.01, "exact_match,flexible-extract": 0.3},
            "gpqa_main_n_shot": {"acc,none": 0.28, "acc_norm,none": 0.27},
        },
        "n-shot": {"ifeval": 0, "gsm8k": 5, "gpqa_main_n_shot": 5},
        "n-samples": {"gsm8k": {"original": 1319, "effective": 1319}},
    }  # fmt: skip
    rows = result_rows(results)
    assert len(rows) == 7 and {r["stderr"] for r in rows if r["task"] == "ifeval"} == {None}
    summary = paper_summary(rows)
    assert [(s["column"].split(" (")[0], s["value"]) for s in summary] == [
        ("IFEval L.Acc", 0.5), ("IFEval S.Acc", 0.4), ("GSM8k EM", 0.25), ("GPQA Non-CoT EM", 0.28),
    ]  # fmt: skip
    markdown = to_markdown("m", rows, summary, "settings")
    assert "| 50.00 | 40.00 | 25.00 | 28.00 |" in markdown
    assert "| gsm8k | exact_match | strict-match | 5 | 0.2500 | 0.0100 | 1319 |" in markdown
