"""Evaluator tools (score, filter, select-pairs, bootstrap-pairs) on CPU with real Ray and tiny models.

The tools run in this process against one module-wide Ray cluster (their `ray_session` reuses a
running Ray), so the cost of a Ray start is paid once; every score is checked against
conftest's independent, unpadded fp32 computation. Bootstrap output is fed to stock
`openrlhf.cli.train_dpo` in a subprocess.
"""

import json
import os
import re
import subprocess
import sys

import pytest
import ray

from conftest import plain_coherent_reward, plain_log_probs
from openrlhf_coherent import devmode
from openrlhf_coherent.config import ConfigError
from openrlhf_coherent.devmode.launch import single_process_env, with_cpu_site
from openrlhf_coherent.scoring import plan_batches, response_log_probs

TOL = 1e-4
TOOLS = ("score", "filter", "select_pairs", "bootstrap_pairs")

QA = [
    ("say hello", "hello !"),
    ("what is the color of the sun ?", "the sun is yellow ."),
    ("how many legs has a dog ?", "a dog has four . the cat is big and the dog is small and happy and fast"),
    ("name a big river", "the big river is blue ."),
    ("count to three", "one two three"),
    ("tell me a short story", "the cat and the dog are happy"),
    ("what is two plus two ?", "four"),
    ("write a long sentence", "the big red sun is happy and the small blue moon is sad and the star is white"),
]


@pytest.fixture(scope="module")
def ray_cluster():
    """Two fake GPUs, dev-mode workers; the tools' `ray_session` reuses it and leaves it running."""
    assert not ray.is_initialized()
    ray.init(**devmode.ray_init_kwargs(2, openrlhf_workers=False))
    yield
    ray.shutdown()


def write_jsonl(path, rows):
    path.write_text("".join((r if isinstance(r, str) else json.dumps(r)) + "\n" for r in rows))
    return str(path)


def run_tool(tool, *argv):
    """Parse and run a tool in this process (no dev-mode patching of the test process itself)."""
    import importlib

    module = importlib.import_module(f"openrlhf_coherent.cli.{tool}")
    module.run(module.parser().parse_args([str(a) for a in argv]))


def summary(capsys, tool):
    out = capsys.readouterr().out
    return json.loads(re.findall(rf"{tool} summary: (\{{.*\}})", out)[-1])


def read(path):
    return [json.loads(line) for line in open(path)]


def chat_ids(model_path, prompt, response):
    """Independent token ids of a chat (prompt, response): templated text, tokenized at the prompt boundary."""
    from transformers import AutoTokenizer

    tok = AutoTokenizer.from_pretrained(model_path)
    user = [{"role": "user", "content": prompt}]
    prompt_text = tok.apply_chat_template(user, tokenize=False, add_generation_prompt=True)
    full = tok.apply_chat_template(user + [{"role": "assistant", "content": response}], tokenize=False)
    ids = tok(full, add_special_tokens=False)["input_ids"]
    n = len(tok(prompt_text, add_special_tokens=False)["input_ids"])
    assert full.endswith(tok.eos_token)  # the tiny template closes the turn with EOS
    return ids[:n], ids[n:]


def expected_reward(sft, base, prompt, response):
    return plain_coherent_reward(sft, base, *chat_ids(sft, prompt, response))


# ---- scoring core (no Ray) ---------------------------------------------------------------------


def test_plan_batches_respects_the_token_budget_and_sorts_by_length():
    lengths = [5, 40, 7, 33, 12, 90, 8]
    batches = plan_batches(lengths, 64)
    assert sorted(i for b in batches for i in b) == list(range(len(lengths)))
    for b in batches:
        assert len(b) == 1 or max(lengths[i] for i in b) * len(b) <= 64
    order = [lengths[i] for b in batches for i in b]
    assert order == sorted(lengths, reverse=True)


def test_response_log_probs_match_unpadded_full_forward(tiny_models):
    from transformers import AutoModelForCausalLM

    _, sft = tiny_models
    model = AutoModelForCausalLM.from_pretrained(sft, use_safetensors=True).eval()
    pairs = [chat_ids(sft, p, r) for p, r in QA]
    # A small budget forces several right-padded batches of mixed lengths; head_chunk < tokens.
    got = response_log_probs(model, pairs, batch_tokens=60, pad_token_id=0, head_chunk=7)
    for (prompt_ids, response_ids), log_probs in zip(pairs, got):
        assert log_probs.dtype.is_floating_point and log_probs.shape == (len(response_ids),)
        assert log_probs.tolist() == pytest.approx(plain_log_probs(sft, prompt_ids, response_ids).tolist(), abs=TOL)


# ---- score, resume ----------------------------------------------------------------------------


@pytest.fixture(scope="module")
def scored(ray_cluster, tiny_models, tmp_path_factory):
    """`score` with 2 actors over QA (chat format): (input path, output path)."""
    base, sft = tiny_models
    d = tmp_path_factory.mktemp("score")
    data = write_jsonl(d / "qa.jsonl", [{"prompt": p, "response": r, "id": i} for i, (p, r) in enumerate(QA)])
    out = d / "scored.jsonl"
    run_tool("score", "--sft_model", sft, "--base_model", base, "--input", data, "--output", out,
             "--apply_chat_template", "--num_actors", 2, "--batch_tokens", 48)  # fmt: skip
    return data, str(out)


def check_scored_row(row, sft, base):
    prompt_ids, response_ids = chat_ids(sft, row["prompt"], row["response"])
    assert row["coherent_reward"] == pytest.approx(plain_coherent_reward(sft, base, prompt_ids, response_ids), abs=TOL)
    assert row["sft_logp"] == pytest.approx(plain_log_probs(sft, prompt_ids, response_ids).sum().item(), abs=TOL)
    assert row["base_logp"] == pytest.approx(plain_log_probs(base, prompt_ids, response_ids).sum().item(), abs=TOL)
    assert row["response_length"] == len(response_ids)
    assert row["coherent_reward_mean"] == pytest.approx(row["coherent_reward"] / len(response_ids), abs=TOL)
    assert row["response_truncated"] is False


def test_score_with_two_actors_matches_independent_reference(scored, tiny_models):
    base, sft = tiny_models
    rows = read(scored[1])
    assert sorted(r["line"] for r in rows) == list(range(1, len(QA) + 1))
    for row in rows:
        assert (row["prompt"], row["response"]) == QA[row["id"]] and row["line"] == row["id"] + 1
        check_scored_row(row, sft, base)


def test_scoring_workers_skip_the_openrlhf_shims(ray_cluster):
    """The tools' workers load models with plain transformers: their set-up hook installs only the
    import stand-ins, so they never import DeepSpeed or OpenRLHF's trainer (11.1 CPU-s to start with
    them, 3.5 without)."""

    @ray.remote(num_gpus=1)
    def imported():
        import sys

        import openrlhf_coherent.data_tools.actor  # noqa: F401 (what a PairScorer worker imports)

        return {name: name in sys.modules for name in ("deepspeed", "openrlhf.trainer")}

    assert ray.get(imported.remote()) == {"deepspeed": False, "openrlhf.trainer": False}


def test_resume_keeps_finished_rows_byte_for_byte_and_adds_only_missing(scored, tiny_models, tmp_path, capsys):
    base, sft = tiny_models
    data, full = scored
    lines = open(full, "rb").read().splitlines(keepends=True)
    kept = b"".join(lines[:3])
    out = tmp_path / "partial.jsonl"
    out.write_bytes(kept + lines[3][:25])  # as if killed in the middle of writing the 4th row
    argv = ["--sft_model", sft, "--base_model", base, "--input", data, "--output", out, "--apply_chat_template"]

    run_tool("score", *argv)
    assert summary(capsys, "score")["already_scored"] == 3
    after = out.read_bytes()
    assert after.startswith(kept)
    rows = read(out)
    assert sorted(r["line"] for r in rows) == list(range(1, len(QA) + 1))
    for row in rows[3:]:
        check_scored_row(row, sft, base)

    run_tool("score", *argv)  # nothing left to do: the file is not touched
    assert summary(capsys, "score") == {"already_scored": len(QA), "scored": 0, "skipped_bad_rows": 0, "bad_lines": []}
    assert out.read_bytes() == after


# ---- filter -----------------------------------------------------------------------------------


def test_filter_top_fraction_and_threshold_on_scored_file(scored, tmp_path):
    rows = read(scored[1])
    out = tmp_path / "kept.jsonl"
    run_tool("filter", "--input", scored[1], "--output", out, "--top_fraction", 0.5)
    best = sorted(rows, key=lambda r: -r["coherent_reward"])[: len(rows) // 2]
    assert [r["line"] for r in read(out)] == sorted(r["line"] for r in best)

    threshold = sorted(r["coherent_reward_mean"] for r in rows)[2]
    run_tool("filter", "--input", scored[1], "--output", out, "--threshold", threshold, "--by", "mean")
    assert [r["line"] for r in read(out)] == sorted(r["line"] for r in rows if r["coherent_reward_mean"] >= threshold)


def test_filter_cross_fitting_scores_each_fold_with_its_own_model(ray_cluster, tiny_models, tmp_path):
    """Two folds by line % 2: fold 0 scored with the SFT model, fold 1 with a second "SFT" model,
    here the base model itself, whose reward against the base is exactly 0: which model scored
    which row is then unmistakable."""
    base, sft = tiny_models
    data = write_jsonl(tmp_path / "qa.jsonl", [{"prompt": p, "response": r} for p, r in QA])
    out = tmp_path / "kept.jsonl"
    run_tool("filter", "--sft_models", f"{sft},{base}", "--base_model", base, "--input", data, "--output", out,
             "--apply_chat_template", "--top_fraction", 0.25)  # fmt: skip
    rows = read(str(out) + ".scored.jsonl")
    assert sorted(r["line"] for r in rows) == list(range(1, len(QA) + 1))
    for row in rows:
        assert row["fold"] == row["line"] % 2
        if row["fold"] == 0:
            assert row["sft_model"] == sft
            check_scored_row(row, sft, base)
        else:
            assert row["sft_model"] == base and row["coherent_reward"] == 0.0
    best = sorted(rows, key=lambda r: (-r["coherent_reward"], r["line"]))[:2]
    assert [r["line"] for r in read(out)] == sorted(r["line"] for r in best)


def test_fold_key_assignment_and_bad_fold_values():
    from openrlhf_coherent.data_tools.responses import fold_assigner
    from openrlhf_coherent.data_tools.rows import BadRow, Job

    assert fold_assigner(None, 3)(Job(line=7, row={})) == 1
    assert fold_assigner("fold", 3)(Job(line=7, row={"fold": 2})) == 2
    for bad in (3, -1, "1", None, True):
        with pytest.raises(BadRow, match="line 5: fold key 'fold'"):
            fold_assigner("fold", 3)(Job(line=5, row={"fold": bad}))


# ---- select-pairs -----------------------------------------------------------------------------


def test_select_pairs_margins_negative_count_and_top_k(ray_cluster, tiny_models, tmp_path, capsys):
    base, sft = tiny_models
    # Chosen = the demonstrated answer, rejected = another prompt's answer; every third pair swapped,
    # so some margins are negative.
    pairs = []
    for i, (p, r) in enumerate(QA):
        other = QA[(i + 3) % len(QA)][1]
        chosen, rejected = (other, r) if i % 3 == 0 else (r, other)
        pairs.append({"prompt": [{"role": "user", "content": p}], "chosen": [{"role": "assistant", "content": chosen}],
                      "rejected": [{"role": "assistant", "content": rejected}]})  # fmt: skip
    data = write_jsonl(tmp_path / "prefs.jsonl", pairs)
    margins = [
        expected_reward(sft, base, p["prompt"][0]["content"], p["chosen"][0]["content"])
        - expected_reward(sft, base, p["prompt"][0]["content"], p["rejected"][0]["content"])
        for p in pairs
    ]
    assert any(m < 0 for m in margins) and any(m > 0 for m in margins)

    out = tmp_path / "selected.jsonl"
    run_tool("select_pairs", "--reward", "coherent", "--sft_model", sft, "--base_model", base, "--input", data,
             "--output", out, "--apply_chat_template", "--top_k", 3)  # fmt: skip
    s = summary(capsys, "select-pairs")
    assert s["pairs"] == len(pairs) and s["kept"] == 3
    assert s["negative_margin"] == sum(m < 0 for m in margins)
    assert s["negative_margin_lines"] == [i + 1 for i, m in enumerate(margins) if m < 0]
    top = sorted(range(len(pairs)), key=lambda i: -margins[i])[:3]
    kept = read(out)
    assert [r["line"] for r in kept] == sorted(i + 1 for i in top)
    for r in kept:
        assert r["margin"] == pytest.approx(margins[r["line"] - 1], abs=2 * TOL)
        assert r["chosen"] == pairs[r["line"] - 1]["chosen"]


# ---- bootstrap-pairs -> train_dpo ----------------------------------------------------------------


def test_bootstrap_pairs_feed_openrlhf_train_dpo(ray_cluster, tiny_models, tmp_path, capsys):
    base, sft = tiny_models
    data = write_jsonl(tmp_path / "prompts.jsonl", [{"prompt": p} for p, _ in QA[:4]])
    out = tmp_path / "pairs.jsonl"
    run_tool("bootstrap_pairs", "--reward", "implicit", "--policy_model", sft, "--ref_model", base, "--input", data,
             "--output", out, "--apply_chat_template", "--num_samples", 3, "--max_new_tokens", 10, "--max_len", 64,
             "--top_k", 2)  # fmt: skip
    s = summary(capsys, "bootstrap-pairs")
    assert s["prompts"] == 4 and s["kept"] == 2

    candidates = {c["line"]: c for c in read(str(out) + ".candidates.jsonl")}
    assert sorted(candidates) == [1, 2, 3, 4]
    for c in candidates.values():
        assert len(c["samples"]) == len(set(c["samples"])) == 3  # R distinct samples
    rows = read(out)
    for row in rows:
        assert set(row) >= {"prompt", "chosen", "rejected", "margin"}
        assert row["prompt"] == [{"role": "user", "content": QA[row["line"] - 1][0]}]
        prompt, chosen, rejected = (row[k][0]["content"] for k in ("prompt", "chosen", "rejected"))
        sums = candidates[row["line"]]["reward_sums"]
        assert row["margin"] == pytest.approx(max(sums) - min(sums))
        # The pair's rewards are the implicit reward log pi(y|x) - log pi_ref(y|x), recomputed independently.
        assert row["chosen_reward"] == pytest.approx(expected_reward(sft, base, prompt, chosen), abs=TOL)
        assert row["rejected_reward"] == pytest.approx(expected_reward(sft, base, prompt, rejected), abs=TOL)
    all_margins = sorted((max(c["reward_sums"]) - min(c["reward_sums"]) for c in candidates.values()), reverse=True)
    assert sorted(r["margin"] for r in rows) == pytest.approx(sorted(all_margins[:2]))

    # Stock OpenRLHF DPO, one step on these pairs, CPU dev mode active through sitecustomize.
    env = dict(os.environ, **single_process_env(), PYTHONPATH=with_cpu_site(None), TOKENIZERS_PARALLELISM="false")
    proc = subprocess.run(
        [sys.executable, "-m", "openrlhf.cli.train_dpo", "--model.model_name_or_path", sft,
         "--data.dataset", str(out), "--data.prompt_key", "prompt", "--data.chosen_key", "chosen",
         "--data.rejected_key", "rejected", "--data.apply_chat_template", "--data.max_len", "64",
         "--train.micro_batch_size", "2", "--train.batch_size", "2", "--train.max_epochs", "1",
         "--ds.zero_stage", "0", "--ds.attn_implementation", "eager",
         "--ckpt.output_dir", str(tmp_path / "dpo"), "--ckpt.path", str(tmp_path / "dpo_ckpt")],
        cwd=tmp_path, capture_output=True, text=True, timeout=300, env=env,
    )  # fmt: skip
    log = proc.stdout + proc.stderr
    assert proc.returncode == 0, log[-5000:]
    assert "num_rows: 2" in log and re.search(r"Train step of epoch 0: 100%.*loss=", log), log[-3000:]


# ---- bad input ----------------------------------------------------------------------------------

GOOD = {"prompt": "say hello", "response": "hello !"}
BAD_ROWS = {
    "malformed JSON": '{"prompt": "say hello", "response": ',
    "missing key 'response'": {"prompt": "say hello"},
    "empty response": {"prompt": "say hello", "response": "  "},
    "no room for a response within --max_len 16": {"prompt": "the " * 20, "response": "hello"},
}


def score_argv(tiny_models, data, out, *extra):
    base, sft = tiny_models
    return ["--sft_model", sft, "--base_model", base, "--input", data, "--output", out,
            "--apply_chat_template", "--max_len", 16, *extra]  # fmt: skip


@pytest.mark.parametrize("reason", list(BAD_ROWS))
def test_bad_row_fails_with_its_line_number_and_keeps_earlier_output(reason, tiny_models, tmp_path):
    data = write_jsonl(tmp_path / "in.jsonl", [GOOD, GOOD, BAD_ROWS[reason], GOOD])
    out = tmp_path / "out.jsonl"
    from openrlhf_coherent.data_tools.pipeline import ScoringRound, scored_by

    base, sft = tiny_models
    earlier = {"line": 1, "coherent_reward": 1.0, "sft_logp": -1.0, "base_logp": -2.0, "scored_by": scored_by(ScoringRound(sft, base))}
    out.write_text(json.dumps(earlier) + "\n")  # an earlier run's output, with the same models
    before = out.read_bytes()
    with pytest.raises(ConfigError, match=rf"line 3: .*{re.escape(reason)}.*--on_bad_row fail"):
        run_tool("score", *score_argv(tiny_models, data, out, "--on_bad_row", "fail"))
    assert out.read_bytes() == before


def test_bad_rows_skipped_with_line_numbers_and_counted(ray_cluster, tiny_models, tmp_path, capsys):
    base, sft = tiny_models
    data = write_jsonl(tmp_path / "in.jsonl", [GOOD, *BAD_ROWS.values(), {"prompt": "count to three", "response": "one"}])
    out = tmp_path / "out.jsonl"
    run_tool("score", *score_argv(tiny_models, data, out, "--on_bad_row", "skip"))
    captured = capsys.readouterr()
    s = json.loads(re.findall(r"score summary: (\{.*\})", captured.out)[-1])
    assert s["skipped_bad_rows"] == 4 and s["bad_lines"] == [2, 3, 4, 5] and s["scored"] == 2
    for line, reason in zip([2, 3, 4, 5], BAD_ROWS):
        assert re.search(rf"skipped line {line}: .*{re.escape(reason)}", captured.err), captured.err
    rows = read(out)
    assert sorted(r["line"] for r in rows) == [1, 6]
    for row in rows:
        check_scored_row(row, sft, base)


def test_model_errors_name_the_flag_before_ray_starts(tiny_models, tmp_path):
    base, sft = tiny_models
    data = write_jsonl(tmp_path / "in.jsonl", [GOOD])
    with pytest.raises(ConfigError, match="--base_model /nonexistent: no such directory"):
        run_tool("score", "--sft_model", sft, "--base_model", "/nonexistent", "--input", data, "--output", tmp_path / "o")
    with pytest.raises(ConfigError, match="--reward implicit needs --ref_model"):
        run_tool("select_pairs", "--reward", "implicit", "--policy_model", sft, "--input", data,
                 "--output", tmp_path / "o", "--top_k", 1)  # fmt: skip
    with pytest.raises(ConfigError, match="exactly one of --top_k, --top_fraction, --threshold"):
        run_tool("filter", "--input", data, "--output", tmp_path / "o", "--top_k", 1, "--threshold", 0)


def test_every_tool_has_help():
    import importlib

    for tool in TOOLS:  # in this process: each tool's parser
        text = importlib.import_module(f"openrlhf_coherent.cli.{tool}").parser().format_help()
        assert "--input" in text and "--on_bad_row" in text, tool
    # and one as a user runs it (a fresh interpreter per tool would cost ~5 CPU-seconds each)
    proc = subprocess.run([sys.executable, "-m", "openrlhf_coherent.cli.score", "--help"], capture_output=True,
                          text=True, timeout=120)  # fmt: skip
    assert proc.returncode == 0 and "--input" in proc.stdout and "--on_bad_row" in proc.stdout, proc.stderr
