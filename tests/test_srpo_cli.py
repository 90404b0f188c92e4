"""SRPO end to end on CPU with tiny local models: the six sequences (text formation, parity with
OpenRLHF's DPO data), `cli.train_srpo` (real OpenRLHF train_dpo, DeepSpeed, reference log-probs
computed once), `cli.revise` (HF path, N = 2, pick by coherent reward), and bad input."""

import json
import os
import shlex
import subprocess
import sys
from types import SimpleNamespace

import pytest
import torch
from safetensors.torch import load_file

from conftest import plain_coherent_reward
from openrlhf_coherent.cli import revise, train_srpo
from openrlhf_coherent.config import ConfigError
from openrlhf_coherent.srpo.dataset import SRPODataset, read_pair, six_texts
from openrlhf_coherent.srpo.loss import SEQUENCES
from openrlhf_coherent.srpo.templates import TEMPLATE_DIR, Template, TextFormat, load_template
from openrlhf_coherent.devmode.tiny_models import build_tokenizer

PAIRS = [
    {"prompt": "what is the color of the sun ?", "chosen": "the sun is yellow .", "rejected": "the sun is blue ."},
    {"prompt": "say hello", "chosen": "hello !", "rejected": "no ."},
    {"prompt": "how many legs has a dog ?", "chosen": "a dog has four .", "rejected": "a dog has two ."},
    {"prompt": "name a big river", "chosen": "the big river is blue .", "rejected": "a cat ."},
]
REVISION = "user : {prompt} answer : {completion} write a good answer :"


def write_jsonl(path, rows):
    path.write_text("".join(json.dumps(r) + "\n" for r in rows))
    return str(path)


@pytest.fixture(scope="module")
def files(tmp_path_factory):
    root = tmp_path_factory.mktemp("srpo_data")
    (root / "revision.txt").write_text(REVISION + "\n")
    (root / "no_completion.txt").write_text("user : {prompt} write a good answer :\n")
    return SimpleNamespace(root=root, prefs=write_jsonl(root / "prefs.jsonl", PAIRS), revision=str(root / "revision.txt"),
                           bad_template=str(root / "no_completion.txt"))


def train_argv(model, data, revision, out, *extra):
    return [
        "--model.model_name_or_path", model,
        "--data.dataset", data,
        "--data.prompt_key", "prompt", "--data.chosen_key", "chosen", "--data.rejected_key", "rejected",
        "--data.max_len", "64",
        "--srpo.revision_template", revision, "--srpo.beta", "0.1", "--srpo.alpha", "0.5",
        "--train.max_epochs", "2", "--train.batch_size", "4", "--train.micro_batch_size", "2",
        "--adam.lr", "1e-3", "--lr_warmup_ratio", "0",
        "--ds.zero_stage", "2", "--ds.param_dtype", "fp32", "--ds.attn_implementation", "eager",
        "--ckpt.output_dir", out, "--ckpt.path", os.path.join(out, "ckpt"),
        *extra,
    ]  # fmt: skip


# ----------------------------------------------------------------------------------------------
# The six sequences
# ----------------------------------------------------------------------------------------------


def test_six_sequences_plain_text_match_openrlhf_dpo_and_the_template(files):
    from openrlhf.datasets.reward_dataset import preprocess_data

    tok = build_tokenizer()
    input_template = "question : {} answer :"
    fmt = TextFormat(Template(REVISION), apply_chat_template=False, input_template=input_template)
    row = PAIRS[0]
    texts = dict(zip(SEQUENCES, six_texts(fmt, tok, row["prompt"], row["chosen"], row["rejected"], line=1)))
    # x -> y_w and x -> y_l are DPO's chosen and rejected, as OpenRLHF forms them.
    prompt, chosen, rejected, _ = preprocess_data(row, input_template, "prompt", "chosen", "rejected", None, True)
    assert texts["w|x"] == (prompt, chosen) and texts["l|x"] == (prompt, rejected)
    after_l = "user : what is the color of the sun ? answer : the sun is blue . write a good answer :"
    after_w = "user : what is the color of the sun ? answer : the sun is yellow . write a good answer :"
    assert texts["w|l"] == (after_l, row["chosen"]) and texts["l|l"] == (after_l, row["rejected"])
    assert texts["l|w"] == (after_w, row["rejected"]) and texts["w|w"] == (after_w, row["chosen"])

    # Tokenized as RewardDataset does: EOS last, prompt boundary = prompt token count.
    data_args = SimpleNamespace(apply_chat_template=False, prompt_key="prompt", chosen_key="chosen", rejected_key="rejected")
    strategy = SimpleNamespace(args=SimpleNamespace(data=data_args, srpo=SimpleNamespace(revision_template=files.revision)),
                               print=lambda *a: None)
    dataset = SRPODataset(PAIRS, tok, 64, strategy, input_template=input_template)
    _, pair = dataset[1]
    for (ids, prompt_len), (p_text, c_text) in zip(pair, six_texts(fmt, tok, *PAIRS[1].values(), line=2)):
        assert ids[-1] == tok.eos_token_id
        assert ids[:prompt_len] == tok(p_text, add_special_tokens=False)["input_ids"]
        assert tok.decode(ids[prompt_len:], skip_special_tokens=True) == c_text
    indices, input_ids, attention_mask, prompt_lens = dataset.collate_fn([dataset[0], dataset[3]])
    assert indices.tolist() == [0, 3] and input_ids.shape[0] == 12 and prompt_lens.shape == (12,)
    assert (input_ids[attention_mask == 0] == tok.pad_token_id).all() and attention_mask[:, 0].all()  # right padding


def test_six_sequences_chat_conversations_without_prompt_key():
    from openrlhf.datasets.reward_dataset import preprocess_data

    tok = build_tokenizer()
    user = {"role": "user", "content": "say hello"}
    row = {"chosen": [user, {"role": "assistant", "content": "hello !"}], "rejected": [user, {"role": "assistant", "content": "no ."}]}
    prompt, chosen, rejected = read_pair(row, (None, "chosen", "rejected"), chat=True, line=1)
    texts = dict(zip(SEQUENCES, six_texts(TextFormat(Template(REVISION), True), tok, prompt, chosen, rejected, line=1)))
    dpo_prompt, dpo_chosen, dpo_rejected, _ = preprocess_data(row, None, None, "chosen", "rejected", tok.apply_chat_template, True)
    assert texts["w|x"] == (dpo_prompt, dpo_chosen) and texts["l|x"] == (dpo_prompt, dpo_rejected)
    # The revision request replaces the last user turn; the completion is the same assistant turn.
    assert texts["w|l"] == ("user : user : say hello answer : no . write a good answer : assistant :", dpo_chosen)
    assert texts["l|w"][0] == "user : user : say hello answer : hello ! write a good answer : assistant :"


# ----------------------------------------------------------------------------------------------
# train_srpo end to end
# ----------------------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def trained(tiny_models, files, tmp_path_factory):
    """Two epochs x one optimizer step (4 pairs, batch 4, micro-batch 2), in a subprocess: stock
    `python -m openrlhf_coherent.cli.train_srpo`, which applies the CPU dev mode itself."""
    _, sft = tiny_models
    out = str(tmp_path_factory.mktemp("srpo_out"))
    env = {k: v for k, v in os.environ.items() if k not in ("RANK", "WORLD_SIZE", "LOCAL_RANK", "MASTER_PORT")}
    env.update(OMP_NUM_THREADS="1", TOKENIZERS_PARALLELISM="false")  # tiny models: threads only add overhead
    cmd = [sys.executable, "-m", "openrlhf_coherent.cli.train_srpo", *train_argv(sft, files.prefs, files.revision, out)]
    proc = subprocess.run(cmd, cwd=out, env=env, capture_output=True, text=True, timeout=600)
    log = proc.stdout + proc.stderr
    assert proc.returncode == 0, log[-4000:]
    lines = [l for l in proc.stdout.splitlines() if l.startswith("[openrlhf_coherent] train_srpo summary: ")]
    assert len(lines) == 1, log[-4000:]
    return out, json.loads(lines[0].split("summary: ", 1)[1]), sft


def test_train_srpo_two_steps_reference_once(trained):
    out, summary, sft = trained
    assert summary["optimizer_steps"] == 2
    # 4 pairs: the reference scored each pair once (2 micro-batches of 2) before the first step;
    # the policy ran on every micro-batch of both epochs.
    assert summary["reference_pairs"] == 4 and summary["reference_forwards"] == 2
    assert summary["policy_forwards"] == 4
    # Before any update the policy is the reference, so the loss is (1 - alpha) * 1 + alpha * 1/2
    # for every pair: the cached reference rows line up with the batch's pairs.
    assert summary["first_loss"] == pytest.approx(0.75, abs=1e-4)
    assert abs(summary["last_loss"] - 0.75) > 1e-3
    trained_weights = load_file(os.path.join(out, "model.safetensors"))
    sft_weights = load_file(os.path.join(sft, "model.safetensors"))
    changed = [k for k in sft_weights if not torch.equal(sft_weights[k], trained_weights[k])]
    assert changed, "train_srpo saved the unchanged SFT weights"


# ----------------------------------------------------------------------------------------------
# revise
# ----------------------------------------------------------------------------------------------


def test_revise_two_revisions_pick_by_coherent(tiny_models, files, tmp_path, monkeypatch, one_thread):
    import openrlhf_coherent.data_tools.sampling as sampling

    base, sft = tiny_models
    prompts = write_jsonl(tmp_path / "prompts.jsonl", [{"prompt": p["prompt"]} for p in PAIRS[:2]])
    out = str(tmp_path / "revisions.jsonl")
    tok = build_tokenizer()
    seen_prompts = []
    real_hf_sample = sampling.hf_sample

    def recording_hf_sample(model, prompt_ids, **kwargs):  # the real sampler, recording its prompts
        seen_prompts.append(tok.decode(prompt_ids))
        return real_hf_sample(model, prompt_ids, **kwargs)

    monkeypatch.setattr(sampling, "hf_sample", recording_hf_sample)
    rc = revise.main([
        "--model", sft, "--input", prompts, "--output", out, "--revision_template", files.revision,
        "--num_revisions", "2", "--max_new_tokens", "6", "--temperature", "1.0", "--top_p", "1.0", "--seed", "3",
        "--pick_by", "coherent", "--sft_model", sft, "--base_model", base,
    ])  # fmt: skip
    assert rc == 0
    rows = [json.loads(l) for l in open(out)]
    assert [r["line"] for r in rows] == [1, 2] and all(len(r["revisions"]) == 3 for r in rows)
    # y_0 from x; y_n from R(x, y_{n-1}).
    assert seen_prompts[0] == PAIRS[0]["prompt"]
    for n in (1, 2):
        expected = REVISION.format(prompt=PAIRS[0]["prompt"], completion=rows[0]["revisions"][n - 1])
        assert seen_prompts[n] == tok.decode(tok(expected, add_special_tokens=False)["input_ids"])
    for row in rows:
        rewards = row["coherent_rewards"]
        scored = [r for r in rewards if r is not None]
        assert row["best_revision"] == rewards.index(max(scored)) and row["best"] == row["revisions"][row["best_revision"]]
    # One reward recomputed independently (plain transformers, fp32), as an answer to x.
    text = rows[0]["revisions"][0]
    if text:
        prompt_ids = tok(PAIRS[0]["prompt"], add_special_tokens=False)["input_ids"]
        full = tok((PAIRS[0]["prompt"] + text).rstrip("\n") + " " + tok.eos_token, add_special_tokens=False)["input_ids"]
        expected = plain_coherent_reward(sft, base, prompt_ids, full[len(prompt_ids):])
        assert rows[0]["coherent_rewards"][0] == pytest.approx(expected, abs=1e-4)


# ----------------------------------------------------------------------------------------------
# Bad input: named line or flag, before any model loads
# ----------------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    "bad_row, message",
    [
        ({"prompt": "say hello", "chosen": "hello !", "rejected": "  "}, "line 2: empty completion in 'rejected'"),
        ({"prompt": "say hello", "rejected": "no ."}, "line 2: missing key 'chosen' (--data.chosen_key)"),
    ],
    ids=["empty_completion", "missing_key"],
)
def test_train_srpo_bad_rows_name_the_line(files, tmp_path, bad_row, message):
    data = write_jsonl(tmp_path / "bad.jsonl", [PAIRS[0], bad_row, PAIRS[1]])
    with pytest.raises(ConfigError, match="--data.dataset .*bad.jsonl: " + message.replace("(", r"\(").replace(")", r"\)")):
        train_srpo.parse_args(train_argv("/no/model/loaded", data, files.revision, str(tmp_path / "out")))


def test_train_srpo_bad_flags_exit_2_before_models_load(files, tmp_path, monkeypatch, capsys):
    monkeypatch.setenv("RANK", "0")  # no single-process env set up in this test process
    argv = train_argv("/no/model/loaded", files.prefs, files.bad_template, str(tmp_path / "out"))
    assert train_srpo.main(argv) == 2
    assert "--srpo.revision_template" in capsys.readouterr().err
    with pytest.raises(ConfigError, match="has no {completion} placeholder"):
        train_srpo.parse_args(argv)
    with pytest.raises(ConfigError, match="--model.beta is DPO's"):
        train_srpo.parse_args(train_argv("/m", files.prefs, files.revision, str(tmp_path / "out"), "--model.beta", "0.1"))
    args = train_srpo.parse_args(train_argv("/m", files.prefs, files.revision, str(tmp_path / "out"), "--srpo.average_log_prob",
                                            "--srpo.generation_template", os.path.join(TEMPLATE_DIR, "tldr_generation.txt")))
    assert args.srpo.average_log_prob and args.data.input_template.format("POST: x").endswith("POST: x\nTL;DR:")


def test_revise_bad_input_names_line_or_flag(tiny_models, files, tmp_path, capsys):
    _, sft = tiny_models
    prompts = write_jsonl(tmp_path / "prompts.jsonl", [{"prompt": "say hello"}, {"question": "say hello"}])
    common = ["--model", sft, "--output", str(tmp_path / "o.jsonl"), "--temperature", "1", "--top_p", "1", "--seed", "0"]
    assert revise.main([*common, "--input", prompts, "--revision_template", files.revision]) == 2
    assert "line 2: missing key 'prompt' (--prompt_key)" in capsys.readouterr().err
    assert revise.main([*common, "--input", prompts, "--revision_template", files.bad_template]) == 2
    assert "--revision_template" in capsys.readouterr().err
    assert not os.path.exists(tmp_path / "o.jsonl")


def test_shipped_templates_load():
    for task in ("tldr", "xsum"):
        gen = load_template(os.path.join(TEMPLATE_DIR, f"{task}_generation.txt"), "g", revision=False)
        rev = load_template(os.path.join(TEMPLATE_DIR, f"{task}_revision.txt"), "r", revision=True)
        assert rev.fill("P {completion}", "C").endswith("P {completion}\nEXAMPLE SUMMARY: C\nTL;DR:")
        assert gen.fill("P").endswith("\n\nP\nTL;DR:")
    load_template(os.path.join(TEMPLATE_DIR, "chat_revision.txt"), "c", revision=True)


@pytest.mark.parametrize("script, expected", [
    ("train_srpo_tldr.sh", {"beta": 0.01, "lr": 2e-6, "epochs": 5, "batch": 128, "lora": (16, 32), "average": False}),
    ("train_srpo_ultrafeedback.sh", {"beta": 1.3, "lr": 1.25e-6, "epochs": 1, "batch": 32, "lora": (0, 16), "average": True}),
])
def test_preset_scripts_parse_with_the_papers_settings(script, expected):
    """DRY_RUN=1 prints the command; train_srpo's own parser (OpenRLHF's + --srpo.*) accepts it."""
    path = os.path.join(os.path.dirname(__file__), "..", "examples", "srpo", script)
    assert subprocess.run(["bash", "-n", path]).returncode == 0
    printed = subprocess.run(["bash", path], env=dict(os.environ, DRY_RUN="1"), capture_output=True, text=True, check=True).stdout
    argv = shlex.split(printed)
    assert argv[:3] == ["deepspeed", "--module", "openrlhf_coherent.cli.train_srpo"]
    args = train_srpo.parse_args(argv[3:])
    assert (args.srpo.beta, args.adam.lr, args.train.max_epochs, args.train.batch_size) == (
        expected["beta"], expected["lr"], expected["epochs"], expected["batch"])
    assert (args.ds.lora.rank, args.ds.lora.alpha) == expected["lora"] and args.srpo.average_log_prob == expected["average"]
