"""Dataset loader for the tiny local lm-eval tasks used by tests/test_evaluate.py (no network).

lm-eval calls `custom_dataset(**metadata, **dataset_kwargs)`; the JSONL sits next to this file,
so the tasks load the same data whatever the working directory is."""

import json
import os

import datasets

HERE = os.path.dirname(os.path.abspath(__file__))


def load_tiny_qa(**_lm_eval_metadata):
    with open(os.path.join(HERE, "tiny_qa.jsonl")) as f:
        rows = [json.loads(line) for line in f if line.strip()]
    return datasets.DatasetDict(
        {split: datasets.Dataset.from_list([r for r in rows if r["split"] == split]) for split in ("train", "test")}
    )
