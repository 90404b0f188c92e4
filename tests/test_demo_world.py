"""demo/world.py: deterministic from the seed, disjoint splits, an exact checker (fast, no models)."""

import hashlib
import json
import random

import pytest

from demo.world import (
    CATEGORIES,
    IN_DOMAIN_CATEGORIES,
    IN_DOMAIN_COUNTS,
    PromptSpec,
    check,
    ideal_response,
    make_world,
    vocabulary,
    write_prompts_jsonl,
    write_sft_jsonl,
)


@pytest.fixture(scope="module")
def world():
    return make_world(0)


def test_world_is_deterministic_in_its_seed(world):
    again = make_world(0)
    assert again.demos == world.demos
    assert again.eval_in == world.eval_in and again.eval_out == world.eval_out
    assert again.ppo_prompts == world.ppo_prompts
    assert again.corpus == world.corpus
    other = make_world(1)
    assert other.demos != world.demos and other.corpus != world.corpus


def test_split_sizes_and_domains(world):
    assert len(world.demos) == 32 and len(world.eval_in) == 64 and len(world.eval_out) == 64
    assert len(world.ppo_prompts) == 256 and len(world.corpus) == 6000
    assert all(s.in_domain for s, _ in world.demos)
    assert {s.category for s, _ in world.demos} == set(IN_DOMAIN_CATEGORIES)
    assert {s.count for s, _ in world.demos} == set(IN_DOMAIN_COUNTS)
    assert all(s.in_domain for s in world.eval_in)
    assert not any(s.in_domain for s in world.eval_out)
    # out-of-domain eval covers both new categories and the unseen count
    assert {s.category for s in world.eval_out} - set(IN_DOMAIN_CATEGORIES)
    assert 4 in {s.count for s in world.eval_out}
    # PPO prompts: every category and count, some exclusions
    assert {s.category for s in world.ppo_prompts} == set(CATEGORIES)
    assert {s.count for s in world.ppo_prompts} == {2, 3, 4}
    assert any(s.exclude for s in world.ppo_prompts) and any(not s.exclude for s in world.ppo_prompts)


def test_demonstrations_follow_the_category_order(world):
    for spec, response in world.demos:
        order = [CATEGORIES[spec.category][1].index(w) for w in response.split(" , ")]
        assert order == sorted(order), response


def test_splits_are_disjoint_by_prompt_text(world):
    splits = {
        "demos": [s.text for s, _ in world.demos],
        "eval_in": [s.text for s in world.eval_in],
        "eval_out": [s.text for s in world.eval_out],
        "ppo": [s.text for s in world.ppo_prompts],
        "val_in": [s.text for s in world.val_in],
        "val_out": [s.text for s in world.val_out],
    }
    for name, texts in splits.items():
        assert len(set(texts)) == len(texts), name
    names = list(splits)
    for i, a in enumerate(names):
        for b in names[i + 1 :]:
            assert not set(splits[a]) & set(splits[b]), (a, b)


def _splits_digest(world) -> str:
    """sha256 of the splits that existed before the validation split (demos, eval, PPO, corpus)."""
    blob = {
        "demos": [[s.to_dict(), r] for s, r in world.demos],
        "eval_in": [s.to_dict() for s in world.eval_in],
        "eval_out": [s.to_dict() for s in world.eval_out],
        "ppo": [s.to_dict() for s in world.ppo_prompts],
        "corpus": world.corpus,
    }
    return hashlib.sha256(json.dumps(blob, sort_keys=True).encode()).hexdigest()


# Digests computed from demo/world.py as it was before the validation split was added (commit
# 48bb67e): adding it must not move any earlier split, or recorded demo results stop reproducing.
_DIGESTS_BEFORE_VALIDATION = {
    0: "238dac92139745534739bd5039a4f39cf3e89a983daa74a0934d33a5d29652d8",
    1: "59f3dd5f199cf32dc0e53a15be86faeb92f7356fc098d0f4ef75a7ee081bef48",
    2: "24d628f6df2db6e35e3b0e3feee39af27490639e6ab291fd8bc0a2e53943ef38",
}


@pytest.mark.parametrize("seed", sorted(_DIGESTS_BEFORE_VALIDATION))
def test_validation_split_leaves_the_earlier_splits_unchanged(seed):
    world = make_world(seed)
    assert _splits_digest(world) == _DIGESTS_BEFORE_VALIDATION[seed]
    # and the validation split has eval's sizes and in/out-of-domain mix
    assert len(world.val_in) == len(world.eval_in) == 64 and len(world.val_out) == len(world.eval_out) == 64
    assert all(s.in_domain for s in world.val_in) and not any(s.in_domain for s in world.val_out)
    assert {s.category for s in world.val_out} - set(IN_DOMAIN_CATEGORIES) and 4 in {s.count for s in world.val_out}
    assert not {s.text for s in world.val_prompts} & {s.text for s in world.eval_prompts}
    assert make_world(seed).val_prompts == world.val_prompts  # deterministic too
    # the sizes are knobs that touch only the validation split
    small = make_world(seed, n_val_in=8, n_val_out=4)
    assert _splits_digest(small) == _splits_digest(world) and small.val_in == world.val_in[:8]
    assert len(small.val_out) == 4


def test_corpus_never_shows_the_instruction_to_list_behaviour(world):
    """The base must learn membership, not the task: no document holds a prompt's text."""
    prompts = {s.text for s in world.eval_prompts + world.val_prompts} | {s.text for s, _ in world.demos}
    joined = "\n".join(world.corpus)
    assert not any(p in joined for p in prompts)
    members = {w for _, words in CATEGORIES.values() for w in words}
    for doc in world.corpus:  # prose lists only: "a , b and c", never a bare "a , b , c"
        t = doc.split()
        for i in range(len(t) - 3):
            if t[i] in members and t[i + 1] == "," and t[i + 2] in members:
                assert t[i + 3] in (",", "and"), doc


def test_vocabulary_covers_prompts_responses_and_corpus(world):
    vocab = set(vocabulary())
    texts = world.corpus + [s.text + " " + r for s, r in world.demos] + [s.text for s in world.ppo_prompts]
    for text in texts:
        assert set(text.split()) <= vocab, set(text.split()) - vocab


def test_checker_accepts_ideal_responses(world):
    rng = random.Random(0)
    for spec in world.eval_prompts + world.ppo_prompts:
        response = ideal_response(spec, rng)
        assert check(spec, response) == (True, "ok"), (spec, response)
    for spec, response in world.demos:
        assert check(spec, response) == (True, "ok")
    # any order, spacing of the decoder
    spec = PromptSpec("foods", 3, "egg")
    assert check(spec, "milk,bread ,  rice") == (True, "ok")


@pytest.mark.parametrize(
    "response, finished, reason",
    [
        ("dog , cow", False, "truncated"),
        ("dog , cow , pig , duck , dog , cow", False, "truncated"),
        ("dog cow , pig", True, "format"),
        ("dog , , pig", True, "format"),
        ("", True, "format"),
        ("the dog is an animal .", True, "format"),
        ("dog , red , pig", True, "not_in_category"),
        ("bread , rice , cake", True, "not_in_category"),
        ("dog , cat , pig", True, "excluded_word"),
        ("dog , dog , pig", True, "duplicate"),
        ("dog , pig", True, "wrong_count"),
        ("dog , pig , cow , duck", True, "wrong_count"),
        ("dog , pig , cow", True, "ok"),
    ],
)
def test_checker_rejects_each_error_kind_with_its_reason(response, finished, reason):
    spec = PromptSpec("animals", 3, "cat", phrasing=0)
    assert spec.text == "list three animals but not cat"
    assert check(spec, response, finished) == (reason == "ok", reason)


def test_jsonl_files_are_what_openrlhf_reads(world, tmp_path):
    sft = [json.loads(line) for line in open(write_sft_jsonl(str(tmp_path / "sft.jsonl"), world.demos))]
    assert [(d["input"], d["output"]) for d in sft] == [(s.text, r) for s, r in world.demos]
    prompts = [json.loads(line) for line in open(write_prompts_jsonl(str(tmp_path / "p.jsonl"), world.ppo_prompts))]
    assert [PromptSpec.from_dict(json.loads(d["label"])) for d in prompts] == world.ppo_prompts
    assert [d["input"] for d in prompts] == [s.text for s in world.ppo_prompts]


def test_evaluate_reads_the_split_it_is_asked_for(world):
    from demo.evaluate import split_specs

    assert split_specs(world, "test") == (world.eval_in, world.eval_out)
    assert split_specs(world, "val") == (world.val_in, world.val_out)
    with pytest.raises(ValueError, match="split"):
        split_specs(world, "eval")
