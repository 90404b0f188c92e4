"""Shared fixtures: tiny local models (built once per session, no model hub) and import stand-ins."""

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


@pytest.fixture(scope="session")
def tiny_models(tmp_path_factory):
    """(base, sft): a random tiny Llama and a copy fine-tuned a few steps on SFT_TEXTS."""
    from openrlhf_coherent.tiny_models import finetune_copy, make_tiny_llama

    root = tmp_path_factory.mktemp("models")
    base = make_tiny_llama(str(root / "base"), seed=0)
    sft = finetune_copy(base, str(root / "sft"), SFT_TEXTS, steps=30)
    return base, sft
