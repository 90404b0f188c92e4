"""The real-model demo's world and checkers (demo_real/), without any model: lm-eval's IFEval
checkers on hand-written responses, offline; the splits disjoint; demonstrations that pass their
own checker; the checker reward's parsing of SmolLM2's chat format. A few seconds (importing lm-eval)."""

import json

import pytest

from demo_real import checkers
from demo_real.checker_reward import parse_query, reward_func
from demo_real.world import (
    DEMO_TOPICS,
    DEMONSTRATED,
    EVAL_TOPICS,
    GROUPS,
    HELD_OUT,
    KINDS,
    PPO_ONLY,
    PPO_TOPICS,
    Instruction,
    ideal_response,
    make_world,
)


def spec(kind, topic="the moon", **kw):
    return Instruction(topic, kind, json.dumps(kw, sort_keys=True))


@pytest.mark.parametrize(
    "kind,kw,good,bad",
    [
        ("lowercase", {}, "the moon orbits the earth.", "The moon orbits the Earth."),
        ("capital", {}, "THE MOON ORBITS THE EARTH EVERY MONTH.", "THE MOON orbits the Earth."),
        ("bullets", {"num_bullets": 2}, "* It orbits.\n* It shines.", "* It orbits.\n* It shines.\n* It is grey."),
        ("end_phrase", {"end_phrase": "Any other questions?"}, "It orbits the Earth. Any other questions?",
         "Any other questions? It orbits the Earth."),
        ("postscript", {"postscript_marker": "P.S."}, "It orbits.\n\nP.S. I hope this helps.", "It orbits."),
        ("no_comma", {}, "It orbits the Earth.", "It orbits, and it shines."),
        ("json", {}, '```json\n{"topic": "moon"}\n```', "The moon: {topic}"),
        ("title", {}, "<<The Moon>>\nIt orbits.", "The Moon\nIt orbits."),
        ("word_limit", {"relation": "less than", "num_words": 5}, "It orbits the Earth.", "It orbits the Earth every month."),
    ],
)  # fmt: skip
def test_lm_eval_checkers_on_hand_written_responses(kind, kw, good, bad):
    s = spec(kind, **kw)
    assert s.check(good) == (True, "ok")
    assert s.check(bad) == (False, "not_followed")
    assert s.check(good, finished=False) == (False, "truncated")
    assert s.check("   ") == (False, "not_followed")  # IFEval's strict test: an empty response fails


def test_checkers_are_lm_evals_offline_safe_ones_and_the_prompts_use_ifevals_wording():
    registry = checkers.registry()
    assert {KINDS[k][0] for k in KINDS} <= set(checkers.OFFLINE_SAFE) <= set(registry)
    assert "length_constraints:number_sentences" not in checkers.OFFLINE_SAFE  # needs NLTK punkt_tab
    with pytest.raises(ValueError, match="offline-safe"):
        checkers.describe("length_constraints:number_sentences", {"num_sentences": 2, "relation": "less than"})
    s = spec("bullets", topic="owls", num_bullets=3)
    assert s.text.startswith("Tell me about owls. Your answer must contain exactly 3 bullet points.")


def test_splits_are_disjoint_by_topic_kind_and_prompt_text():
    assert not (set(DEMO_TOPICS) & set(EVAL_TOPICS) or set(DEMO_TOPICS) & set(PPO_TOPICS) or set(EVAL_TOPICS) & set(PPO_TOPICS))
    assert sorted(DEMONSTRATED + PPO_ONLY + HELD_OUT) == sorted(KINDS)
    w = make_world(0)
    demo_texts = {s.text for s, _ in w.demos}
    eval_texts = {s.text for s in w.eval_prompts}
    ppo_texts = {s.text for s in w.ppo_prompts}
    assert len(demo_texts) == len(w.demos) == 12 and len(eval_texts) == 48 and len(ppo_texts) == 24
    assert not (demo_texts & eval_texts or demo_texts & ppo_texts or eval_texts & ppo_texts)
    assert {s.kind for s, _ in w.demos} == set(DEMONSTRATED)
    assert {s.kind for s in w.ppo_prompts} == set(DEMONSTRATED + PPO_ONLY)  # held-out kinds never trained on
    for group, _ in GROUPS:
        assert len(w.eval_group(group)) == 16
    assert make_world(0).ppo_prompts == w.ppo_prompts  # deterministic


def test_every_demonstration_passes_its_own_checker():
    for s, response in make_world(0).demos:
        assert s.check(response) == (True, "ok"), (s, response)
    # the ideal responses of the other kinds too (capital letters skipped: langdetect calls some
    # upper-case English text non-English, which is IFEval's checker as it is)
    for topic, facts in DEMO_TOPICS.items():
        for kind, (_, choices) in KINDS.items():
            if kind == "capital":
                continue
            for kw in choices:
                s = spec(kind, topic=topic, **kw)
                assert s.check(ideal_response(s, facts)) == (True, "ok"), (kind, topic)


def test_checker_reward_parses_smollm2_chat_format():
    prompt = "<|im_start|>system\nYou are SmolLM<|im_end|>\n<|im_start|>user\nHi<|im_end|>\n<|im_start|>assistant\n"
    assert parse_query(prompt + "* a\n* b<|im_end|>") == ("* a\n* b", True)
    assert parse_query(prompt + "* a\n* b") == ("* a\n* b", False)
    label = json.dumps(spec("bullets", num_bullets=2).to_dict())
    out = reward_func([prompt + "* a\n* b<|im_end|>", prompt + "* a<|im_end|>", "garbage"], [prompt] * 3, [label, label, "{"])
    assert out["rewards"].tolist() == [1.0, 0.0, 0.0]
