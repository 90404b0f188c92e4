"""Shared fixtures: tiny local models (built once per session, no model hub) and import stand-ins."""

import json
import os

import pytest

from openrlhf_coherent import devmode

# OpenRLHF imports vllm and flash_attn at import time; neither exists on a CPU machine.
devmode.install_import_stand_ins()

os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")

SFT_TEXTS = [
    "user : what is the color of the sun ? assistant : the sun is yellow .",
    "user : say hello assistant : hello !",
    "user : how many legs has a dog ? assistant : a dog has four .",
    "user : name a big river assistant : the big river is blue .",
]


# `make test` runs two pytest-xdist workers that take whole files (`--dist loadfile`: a module's
# expensive fixture is built once, not once per worker). The longest files go first, so that
# neither worker ends the run alone on one of them. Order measured on the 2-core CI machine (the
# seconds each file took under `-n 2`, rounded); files not listed follow in their usual order.
LONGEST_FILES_FIRST = (
    "test_reward_hacking.py",  # 310 s: two 12-step demo-size PPO runs
    "test_demo_paper.py",  # 467 s alone on a loaded machine: `demo.paper --quick`, four 2-buffer GAE runs
    "test_job_scripts.py",  # 230 s: the Slurm script's Ray cluster and job
    "test_evaluator.py",  # 190 s
    "test_demo.py",  # 180 s: `demo.run --quick`
    "test_e2e_srppo.py",  # 160 s: the killed and resumed GAE run
    "test_notebooks.py",  # 150 s
    "test_sera.py",  # 100 s
    "test_cluster_correctness.py",
    "test_devmode.py",
    "test_patch.py",
    "test_real_model.py",
    "test_actor.py",
    "test_baselines.py",
)


def pytest_collection_modifyitems(session, config, items):
    rank = {name: i for i, name in enumerate(LONGEST_FILES_FIRST)}
    items.sort(key=lambda item: rank.get(item.path.name, len(rank)))  # stable


@pytest.fixture
def one_thread():
    """Tiny models and tensors: intra-op threads only add synchronisation (up to 30x slower on a
    busy 2-core machine)."""
    import torch

    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


@pytest.fixture(scope="session")
def prompt_file(tmp_path_factory):
    """Eight short user prompts in OpenRLHF's prompt-dataset JSONL format (key "input")."""
    from srppo_helpers import PROMPTS

    path = tmp_path_factory.mktemp("data") / "prompts.jsonl"
    path.write_text("".join(json.dumps({"input": p}) + "\n" for p in PROMPTS))
    return str(path)


@pytest.fixture(scope="session")
def tiny_models(tmp_path_factory, request):
    """(base, sft): a random tiny Llama and a copy fine-tuned a few steps on SFT_TEXTS. Built once
    per run: under pytest-xdist the first worker builds them in the run's shared temp dir and the
    others wait for it (tests only read these folders)."""
    from filelock import FileLock

    from openrlhf_coherent.devmode.tiny_models import finetune_copy, make_tiny_llama

    if hasattr(request.config, "workerinput"):
        # An xdist worker: getbasetemp() is this worker's folder, its parent belongs to this run.
        root = tmp_path_factory.getbasetemp().parent / "shared_tiny_models"
    else:
        root = tmp_path_factory.mktemp("models")
    base, sft, done = str(root / "base"), str(root / "sft"), root / "BUILT"
    with FileLock(str(root) + ".lock"):
        if not done.exists():
            make_tiny_llama(base, seed=0)
            finetune_copy(base, sft, SFT_TEXTS, steps=30)
            done.write_text("")
    return base, sft


def plain_log_probs(model_path, prompt_ids, response_ids):
    """Independent reference: per-token log p(response | prompt) of one unpadded row, with plain
    transformers in fp32 (no OpenRLHF, no padding, no masks)."""
    import torch

    model = _load_plain(model_path)
    ids = torch.tensor([list(prompt_ids) + list(response_ids)])
    with torch.no_grad():
        logits = model(ids).logits.float()
    log_probs = torch.log_softmax(logits[0, :-1], dim=-1).gather(-1, ids[0, 1:, None])[:, 0]
    return log_probs[len(prompt_ids) - 1 :]


_PLAIN_MODELS = {}


def _load_plain(path):
    import torch
    from transformers import AutoModelForCausalLM

    if path not in _PLAIN_MODELS:
        _PLAIN_MODELS[path] = AutoModelForCausalLM.from_pretrained(path, dtype=torch.float32).eval()
    return _PLAIN_MODELS[path]


def plain_coherent_reward(sft_path, base_path, prompt_ids, response_ids):
    """log p_SFT(y|x) - log p_base(y|x), summed over the response, computed independently."""
    return (
        plain_log_probs(sft_path, prompt_ids, response_ids).sum() - plain_log_probs(base_path, prompt_ids, response_ids).sum()
    ).item()
