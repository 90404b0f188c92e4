"""The SeRA loop (cli/sera.py): selection under label noise, eq. 7, two real rounds, resume, bad input.

The end-to-end run is the real CLI in a subprocess on the tiny models: round 1 trains on every
pair with OpenRLHF's DPO trainer (SLiC loss, SFT as reference); round 2 selects by the round
reward through select-pairs (real Ray, CPU dev mode), bootstraps from the round-1 policy through
bootstrap-pairs and trains from the round-1 policy with it as reference. Re-runs are in this
process: with every score and sample on disk they start no Ray and load no model for scoring.
"""

import argparse
import json
import math
import os
import random
import re
import subprocess
import sys
from types import SimpleNamespace

import pytest

from conftest import plain_log_probs
from openrlhf_coherent.config import ConfigError

PAIRS = [
    ("say hello", "hello !", "the dog is sad"),
    ("what is the color of the sun ?", "the sun is yellow .", "the sun is blue ."),
    ("how many legs has a dog ?", "a dog has four .", "a dog has two ."),
    ("name a big river", "the big river is blue .", "a cat ."),
    ("count to three", "one two three", "one two"),
    ("tell me a short story", "the cat and the dog are happy", "no"),
]
K, K_BOOT = math.ceil(0.7 * len(PAIRS)), math.ceil(0.3 * len(PAIRS))  # 5, 2


def write_jsonl(path, rows):
    path.write_text("".join((r if isinstance(r, str) else json.dumps(r)) + "\n" for r in rows))
    return str(path)


def read(path):
    return [json.loads(line) for line in open(path)]


def sera_summary(text):
    return json.loads(re.findall(r"sera summary: (\{.*\})", text)[-1])


# ---- selection under label noise (pure logic) ----------------------------------------------------


def test_margin_selection_keeps_fewer_flipped_pairs_than_random():
    """30% of labels flipped; implicit rewards of three policies that each moved (noisily) toward the
    clean preference; eq. 7 margin, global top 0.7 N, against a random 0.7 N."""
    from openrlhf_coherent.data_tools.actor import ensemble_reward
    from openrlhf_coherent.data_tools.common import select

    def keep_top_k(rows, k):  # what select-pairs --top_k k does with the scored margins
        return select(rows, "margin", argparse.Namespace(top_k=k, top_fraction=None, threshold=None))

    rng = random.Random(0)
    n = 400
    flipped = set(rng.sample(range(n), int(0.3 * n)))
    rows = []
    for i in range(n):
        quality = sorted((rng.gauss(0, 1), rng.gauss(0, 1)), reverse=True)  # clean: better first
        chosen, rejected = quality[::-1] if i in flipped else quality
        reward = {}
        for name, q in (("chosen", chosen), ("rejected", rejected)):
            logp0 = rng.gauss(-20, 3)  # theta_0 = SFT
            logp1 = logp0 + 0.5 * q + rng.gauss(0, 0.5)  # each round's update follows quality, noisily
            logp2 = logp1 + 0.5 * q + rng.gauss(0, 0.5)
            reward[name] = ensemble_reward(logp2 - logp1, logp1 - logp0, 0.3)  # r_3, eq. 7
        rows.append({"line": i + 1, "margin": reward["chosen"] - reward["rejected"], "flipped": i in flipped})
    k = math.ceil(0.7 * n)
    kept = keep_top_k(rows, k)
    assert len(kept) == k and [r["line"] for r in kept] == sorted(r["line"] for r in kept)
    assert min(r["margin"] for r in kept) >= max(r["margin"] for r in rows if r not in kept)
    by_margin = sum(r["flipped"] for r in kept)
    by_chance = sum(r["flipped"] for r in random.Random(1).sample(rows, k))
    report = f"flipped pairs kept: margin selection {by_margin}/{k}, random {by_chance}/{k} ({len(flipped)} of {n} flipped)"
    print(report)
    # Seeds 0-3 of this setup keep 30-42 flipped pairs by margin against 82-89 at random.
    assert by_margin < 0.6 * by_chance, report


# ---- the real loop: two rounds --------------------------------------------------------------------


@pytest.fixture(scope="module")
def sera_run(tiny_models, tmp_path_factory):
    base, sft = tiny_models
    tmp = tmp_path_factory.mktemp("sera")
    data = write_jsonl(tmp / "prefs.jsonl", [{"prompt": p, "chosen": c, "rejected": r} for p, c, r in PAIRS])
    out = tmp / "out"
    argv = ["--sft_model", sft, "--input", data, "--output_dir", str(out), "--apply_chat_template",
            "--rounds", "2", "--num_samples", "3", "--max_new_tokens", "8", "--max_len", "64",
            "--dpo.loss", "slic", "--model.beta", "0.5",
            # train_dpo flags, passed through unchanged
            "--train.batch_size", "2", "--train.micro_batch_size", "2", "--ds.zero_stage", "0", "--adam.lr", "1e-3"]  # fmt: skip
    env = dict(os.environ, TOKENIZERS_PARALLELISM="false")
    proc = subprocess.run([sys.executable, "-m", "openrlhf_coherent.cli.sera", *argv], capture_output=True, text=True,
                          timeout=900, env=env)  # fmt: skip
    log = proc.stdout + proc.stderr
    assert proc.returncode == 0, log[-5000:]
    return SimpleNamespace(root=str(out), argv=argv, log=log, sft=sft, round=lambda t, f="": os.path.join(out, f"round_{t}", f))


def test_two_rounds_keep_every_dataset_and_model(sera_run):
    r = sera_run.round
    assert sera_summary(sera_run.log)["ran"] == [1, 2]
    for t in (1, 2):
        assert os.path.exists(r(t, "DONE.json")) and os.path.exists(r(t, "model/model.safetensors"))
    round1 = read(r(1, "train.jsonl"))
    assert [x["line"] for x in round1] == [1, 2, 3, 4, 5, 6] and {x["source"] for x in round1} == {"offline"}
    round2 = read(r(2, "train.jsonl"))
    offline = [x for x in round2 if x["source"] == "offline"]
    boot = [x for x in round2 if x["source"] == "bootstrap"]
    assert len(offline) == K and 1 <= len(boot) <= K_BOOT
    assert json.load(open(r(2, "DONE.json")))["train_pairs"] == len(round2)
    # Eq. 6: round t starts from theta_{t-1} and uses it as reference; round 1 from/with the SFT model.
    for t, theta in ((1, sera_run.sft), (2, r(1, "model"))):
        command = open(r(t, "train.log")).readline()
        assert f"--model.model_name_or_path {theta} --ref.model_name_or_path {theta} " in command
        assert f"--data.dataset {r(t, 'train.jsonl')}" in command
        log = open(r(t, "train.log")).read()
        assert "--dpo.loss slic (DPOTrainer[slic])" in log and "Train step of epoch 0: 100%" in log
    # Training moved the weights.
    from safetensors.torch import load_file

    w1, w2 = load_file(r(1, "model/model.safetensors")), load_file(r(2, "model/model.safetensors"))
    assert any(not (w1[k] == w2[k]).all() for k in w1)


def chat_ids(model_path, prompt, response):
    from transformers import AutoTokenizer

    tok = AutoTokenizer.from_pretrained(model_path)
    user = [{"role": "user", "content": prompt}]
    prompt_text = tok.apply_chat_template(user, tokenize=False, add_generation_prompt=True)
    ids = tok(tok.apply_chat_template(user + [{"role": "assistant", "content": response}], tokenize=False),
              add_special_tokens=False)["input_ids"]  # fmt: skip
    n = len(tok(prompt_text, add_special_tokens=False)["input_ids"])
    return ids[:n], ids[n:]


def implicit_reward(policy, ref, prompt, response):
    ids = chat_ids(policy, prompt, response)
    return (plain_log_probs(policy, *ids).sum() - plain_log_probs(ref, *ids).sum()).item()


def test_round2_selects_global_top_k_and_bootstraps_by_the_round_reward(sera_run):
    """r_2 = log pi_1 - log pi_0 (eq. 7 for t = 2), recomputed independently with plain transformers."""
    r, theta1, theta0 = sera_run.round, sera_run.round(1, "model"), sera_run.sft
    margins = {}
    for line, (p, c, rej) in enumerate(PAIRS, start=1):
        margins[line] = implicit_reward(theta1, theta0, p, c) - implicit_reward(theta1, theta0, p, rej)
    top = sorted(sorted(margins, key=lambda line: -margins[line])[:K])
    selected = read(r(2, "selected.jsonl"))
    assert [x["line"] for x in selected] == top
    for x in selected:
        assert x["margin"] == pytest.approx(margins[x["line"]], abs=2e-4)

    candidates = {c["line"]: c for c in read(r(2, "bootstrap.jsonl.candidates.jsonl"))}
    assert sorted(candidates) == [1, 2, 3, 4, 5, 6]
    for c in candidates.values():
        assert len(c["samples"]) == len(set(c["samples"])) <= 3  # R distinct samples at most
    pairs = read(r(2, "bootstrap.jsonl"))
    all_margins = sorted((max(c["reward_sums"]) - min(c["reward_sums"]) for c in candidates.values() if len(c["samples"]) >= 2))
    assert sorted(x["margin"] for x in pairs) == pytest.approx(sorted(all_margins[::-1][:K_BOOT]))  # global top-k~
    for x in pairs:  # (argmax, argmin) of the samples' round reward, recomputed
        prompt, chosen, rejected = (x[k][0]["content"] for k in ("prompt", "chosen", "rejected"))
        sums = candidates[x["line"]]["reward_sums"]
        assert implicit_reward(theta1, theta0, prompt, chosen) == pytest.approx(max(sums), abs=2e-4)
        assert implicit_reward(theta1, theta0, prompt, rejected) == pytest.approx(min(sums), abs=2e-4)


def test_eq7_round_reward_of_three_policies(sera_run):
    """Round 3's reward (1-g) log(pi_2/pi_1) + g log(pi_1/pi_0), as the evaluator actor computes it."""
    from openrlhf_coherent.data_tools.actor import PairScorer
    from openrlhf_coherent.sera.selection import round_reward_models

    thetas = [sera_run.sft, sera_run.round(1, "model"), sera_run.round(2, "model")]
    models = round_reward_models(thetas, 3, 0.3)
    assert models == {"policy_model": thetas[2], "ref_model": thetas[1], "ensemble_model": thetas[0], "ensemble_gamma": 0.3}
    assert round_reward_models(thetas, 2, 0.3) == {"policy_model": thetas[1], "ref_model": thetas[0]}
    scorer = PairScorer.__ray_metadata__.modified_class(  # the actor's class, without Ray
        models["policy_model"], models["ref_model"], ensemble=models["ensemble_model"], ensemble_gamma=0.3
    )
    prompt, response = PAIRS[1][0], PAIRS[1][1]
    got = scorer.score([chat_ids(thetas[0], prompt, response)])["reward"][0]
    expected = 0.7 * implicit_reward(thetas[2], thetas[1], prompt, response) + 0.3 * implicit_reward(thetas[1], thetas[0], prompt, response)
    assert got == pytest.approx(expected, abs=1e-4)


# ---- resume -----------------------------------------------------------------------------------------


def test_rerun_does_nothing_and_a_deleted_marker_reruns_only_that_round(sera_run, capsys):
    from openrlhf_coherent.cli import sera

    r = sera_run.round
    # Round 1 and round 2's append-only score/sample streams: untouched (same bytes, same mtime).
    kept = [r(1, "DONE.json"), r(1, "model/model.safetensors"), r(2, "selected.jsonl.scored.jsonl"),
            r(2, "bootstrap.jsonl.candidates.jsonl")]  # fmt: skip
    state = lambda paths: {p: (os.stat(p).st_mtime_ns, open(p, "rb").read()) for p in paths}  # noqa: E731
    before = state(kept + [r(2, "DONE.json"), r(2, "model/model.safetensors")])
    train_data = open(r(2, "train.jsonl"), "rb").read()

    assert sera.main(sera_run.argv) == 0
    assert sera_summary(capsys.readouterr().out)["ran"] == []
    assert state(before) == before

    os.remove(r(2, "DONE.json"))
    assert sera.main(sera_run.argv) == 0
    out = capsys.readouterr().out
    assert sera_summary(out)["ran"] == [2]
    assert '"already_scored": 6, "scored": 0' in out and '"already_done": 6, "prompts": 0' in out  # nothing rescored/resampled
    assert state(kept) == {p: before[p] for p in kept}
    assert open(r(2, "train.jsonl"), "rb").read() == train_data  # the same D_2, rebuilt from the kept streams
    assert os.stat(r(2, "model/model.safetensors")).st_mtime_ns > before[r(2, "model/model.safetensors")][0]  # retrained
    assert os.path.exists(r(2, "DONE.json")) and os.path.exists(r(2, "model/model.safetensors"))

    # A resume with other flags is refused, naming them.
    with pytest.raises(ConfigError, match=r"--model.beta: 0.5 -> 0.2"):
        sera.run(*sera.parse([*sera_run.argv, "--model.beta", "0.2"]))


# ---- bad input, before any model loads ---------------------------------------------------------------


@pytest.mark.parametrize(
    "row, message",
    [
        ({"prompt": "say hello", "chosen": "hello !", "rejected": " "}, "line 2: empty response"),
        ({"prompt": "say hello", "chosen": "hello !"}, "line 2: missing key 'rejected'"),
        ('{"prompt": "say hello", ', "line 2: malformed JSON"),
    ],
)
def test_bad_row_fails_with_its_line_before_models_load(tiny_models, tmp_path, row, message):
    from openrlhf_coherent.cli import sera

    good = {"prompt": "count to three", "chosen": "one two three", "rejected": "one"}
    data = write_jsonl(tmp_path / "prefs.jsonl", [good, row, good])
    out = tmp_path / "out"
    with pytest.raises(ConfigError, match=rf"--input {re.escape(data)}: {message}"):
        sera.run(*sera.parse(["--sft_model", tiny_models[1], "--input", data, "--output_dir", str(out), "--train.batch_size", "1"]))
    assert not out.exists()  # nothing written, no round started


def test_bad_flags_are_named(tiny_models, tmp_path):
    from openrlhf_coherent.cli import sera

    data = write_jsonl(tmp_path / "prefs.jsonl", [{"prompt": p, "chosen": c, "rejected": r} for p, c, r in PAIRS])
    base = ["--sft_model", tiny_models[1], "--input", data, "--output_dir", str(tmp_path / "out")]
    for extra, message in [
        (["--data.dataset", "x.jsonl"], "--data.dataset is set by sera"),
        (["--ref.model_name_or_path", "x"], "--ref.model_name_or_path is set by sera"),
        (["--gamma", "1.5"], "--gamma must be in"),
        (["--num_samples", "1"], "--num_samples must be >= 2"),
        (["--dpo.simpo_gamma", "0.5"], "--dpo.simpo_gamma needs --dpo.loss simpo"),
    ]:
        with pytest.raises(ConfigError, match=re.escape(message)):
            sera.parse(base + extra)
    with pytest.raises(ConfigError, match=r"--train.batch_size 128 is larger than a round's dataset \(6 pairs"):
        sera.run(*sera.parse(base))
    with pytest.raises(ConfigError, match="--sft_model /nonexistent: no such directory"):
        sera.run(*sera.parse([*base[2:], "--sft_model", "/nonexistent"]))
    assert not (tmp_path / "out").exists()
