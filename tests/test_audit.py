"""The reward audit (`python -m openrlhf_coherent.cli.audit`) on a case whose verdict is known, and its bad inputs.

The constructed case: the base model's LM head is zero, so log p_base = -log V for every token
exactly, and the SFT model is trained on answers that repeat one word three times ("cat cat cat").
The summed coherent reward is then log p_SFT(y) + |y| log V: every extra token the SFT model finds
likelier than 1/V adds to it, so it must prefer the reference repeated 8 more times (24 tokens of
a word the SFT model predicts after itself), while the per-token mean (log p_SFT per token + log V)
must not, and neither aggregation may prefer the empty answer or a truncation (each drops learned
tokens and puts EOS where the SFT model does not expect it).
"""

import json
import os

import pytest
import ray

from conftest import plain_coherent_reward
from openrlhf_coherent.cli import audit
from openrlhf_coherent.config import ConfigError
from openrlhf_coherent.files import loads
from test_input_safety import evil_model  # noqa: F401  (a fixture: a model folder whose auto_map runs code)

WORDS = ["red", "cat", "dog", "sun", "tree", "fish", "moon", "star"]
USER_KINDS = '''
PERTURBATIONS = {
    "doubled": lambda ref: ref.text + " " + ref.text,
    "no_eos": lambda ref: (ref.text, False),  # the reference cut off before its EOS
}
'''


@pytest.fixture(scope="module")
def constructed(tmp_path_factory):
    import torch
    from transformers import AutoModelForCausalLM

    from openrlhf_coherent.devmode.tiny_models import finetune_copy, make_tiny_llama

    root = tmp_path_factory.mktemp("audit")
    rows = [{"prompt": f"say {w}", "response": " ".join([w] * 3)} for w in WORDS]
    data = root / "refs.jsonl"
    data.write_text("".join(json.dumps(r) + "\n" for r in rows))
    base = make_tiny_llama(str(root / "base"), seed=1)
    model = AutoModelForCausalLM.from_pretrained(base)
    with torch.no_grad():
        model.lm_head.weight.zero_()  # uniform next-token distribution: log p_base = -log V exactly
    model.save_pretrained(base, safe_serialization=True)
    init = make_tiny_llama(str(root / "init"), seed=2)
    sft = finetune_copy(init, str(root / "sft"), [f"user : {r['prompt']} assistant : {r['response']}" for r in rows], steps=60)
    user = root / "user_kinds.py"
    user.write_text(USER_KINDS)
    return {"root": root, "data": str(data), "base": base, "sft": sft, "rows": rows, "user": str(user)}


def argv(c, out, *extra):
    return ["--sft_model", c["sft"], "--base_model", c["base"], "--input", c["data"], "--apply_chat_template",
            "--output", str(out), *extra]  # fmt: skip


def run(args_list):
    return audit.run(audit.parser().parse_args([str(a) for a in args_list]))


def test_audit_verdict_on_a_constructed_case(constructed, capsys):
    c = constructed
    out = c["root"] / "out"
    result = run(argv(c, out, "--perturbations", c["user"], "--continue_tokens", 6, "--num_actors", 2))
    table = result["per_kind"]
    n = len(c["rows"])
    # The known answer: summed prefers the 8x repetition on every prompt, mean on none.
    assert table["sum"]["repeat_last_x8"]["win_rate"] < 0.5
    assert table["sum"]["repeat_last_x8"]["mean_length_change"] == 24
    assert table["mean"]["repeat_last_x8"]["win_rate"] > 0.5
    for agg in ("sum", "mean"):
        for kind in ("empty", "truncate_50", "no_eos"):
            assert table[agg][kind]["win_rate"] == 1.0, (agg, kind)
    assert table["sum"]["doubled"]["n"] == n and table["sum"]["drop_last_sentence"] is None  # one-sentence answers
    verdict = result["verdict"]
    assert any(f.startswith("sum: prefers repeat_last_x8 on") and "lengthens answers" in f for f in verdict["flags"])
    assert not any(f.startswith("mean: prefers repeat_last_x8") for f in verdict["flags"])
    assert verdict["recommended"] != "sum" and "repeat_last_x8" not in verdict["preferred"][verdict["recommended"]]
    assert "--coherent" in verdict["recommended_flags"]

    # The margins are the PPO reward, recomputed independently (plain fp32 transformers, unpadded).
    from transformers import AutoTokenizer

    tok = AutoTokenizer.from_pretrained(c["sft"])

    def ids(prompt, response):
        user = [{"role": "user", "content": prompt}]
        p = tok.apply_chat_template(user, tokenize=False, add_generation_prompt=True)
        full = tok.apply_chat_template(user + [{"role": "assistant", "content": response}], tokenize=False)
        all_ids = tok(full, add_special_tokens=False)["input_ids"]
        k = len(tok(p, add_special_tokens=False)["input_ids"])
        return all_ids[:k], all_ids[k:]

    margins = []
    for r in c["rows"]:
        word = r["response"].split()[-1]
        repeated = r["response"] + f" {word} {word} {word}" * 8
        margins.append(
            plain_coherent_reward(c["sft"], c["base"], *ids(r["prompt"], r["response"]))
            - plain_coherent_reward(c["sft"], c["base"], *ids(r["prompt"], repeated))
        )
    assert table["sum"]["repeat_last_x8"]["mean_margin"] == pytest.approx(sum(margins) / n, abs=1e-3)

    # Outputs: strict JSON equal to what run() returned, the report, the plot.
    with open(out / "audit.json") as f:
        assert loads(f.read()) == json.loads(json.dumps(result))
    md = (out / "audit.md").read_text()
    assert verdict["summary"] in md and "| repeat_last_x8 | 8 |" in md and "audit.png" in md
    assert (out / "audit.png").read_bytes()[:4] == b"\x89PNG"
    assert "sum: prefers repeat_last_x8" in capsys.readouterr().out

    # A second run never overwrites a finished audit.
    with pytest.raises(ConfigError, match="not empty"):
        run(argv(c, out))


def test_perturbation_kinds_on_text():
    from openrlhf_coherent.data_tools import perturbations as P
    from openrlhf_coherent.devmode.tiny_models import build_tokenizer

    tok = build_tokenizer()
    ref = P.Reference(1, {}, "the sun is red . the cat is big . the dog is small .", tok, ["hello !", "the sun is red . the cat is big . the dog is small ."])
    assert P.drop_last_sentence(ref) == "the sun is red . the cat is big ."
    assert P.BUILTIN["repeat_last_x3"](ref) == ref.text + " the dog is small ." * 3
    assert P.truncate_50(ref) == "the sun is red . the cat"  # 15 tokens -> the first 7
    assert P.swap_reference(ref) == "hello !"
    assert P.empty(ref) == ""
    shuffled = P.shuffle_sentences(ref)
    assert shuffled != ref.text and sorted(P.sentences(shuffled)) == sorted(P.sentences(ref.text))
    items = P.Reference(1, {}, "- apples\n- pears\n- plums", tok)
    assert P.drop_last_item(items) == "- apples\n- pears" and P.drop_last_line(items) == "- apples\n- pears"
    assert P.drop_last_item(P.Reference(1, {}, "red , green , blue", tok)) == "red , green"
    assert P.drop_last_sentence(P.Reference(1, {}, "one sentence only", tok)) is None


# --- bad input: a clear error naming the flag, before Ray and before any model loads ----------------


def bad_cases(c, tmp, evil):
    full = tmp / "full"
    full.mkdir(exist_ok=True)
    (full / "keep.txt").write_text("user data")
    files = {
        "none.py": "X = 1\n",
        "clash.py": "PERTURBATIONS = {'empty': lambda ref: ''}\n",
        "raises.py": "PERTURBATIONS = {'boom': lambda ref: 1 / 0}\n",
        "wrong_type.py": "PERTURBATIONS = {'num': lambda ref: 3}\n",
    }
    for name, text in files.items():
        (tmp / name).write_text(text)
    out = tmp / "new"
    return [
        (argv(c, c["data"]), "--output .* is the same file as the input --input"),
        (argv(c, full), "--output .*not empty"),
        (argv(c, out)[:5] + [str(tmp / "missing.jsonl"), "--output", str(out)], "--input .*no such file"),
        (argv(c, out, "--perturbations", tmp / "none.py"), "--perturbations .*PERTURBATIONS"),
        (argv(c, out, "--perturbations", tmp / "clash.py"), "'empty' has the name of a built-in kind"),
        (argv(c, out, "--perturbations", tmp / "raises.py"), "perturbation 'boom' raised on --input line 1: ZeroDivisionError"),
        (argv(c, out, "--perturbations", tmp / "wrong_type.py"), "perturbation 'num' returned int on --input line 1"),
        (argv(c, out, "--kinds", "truncate_50,bogus"), "--kinds: unknown kinds \\['bogus'\\]"),
        (argv(c, out, "--sft_logp_floor", "nan"), "--sft_logp_floor must be a finite number"),
        (argv(c, out, "--continue_tokens", "-1"), "--continue_tokens must be >= 0"),
        (["--sft_model", c["sft"], "--base_model", evil, "--input", c["data"], "--output", out], "--base_model .*auto_map.*--trust_remote_code"),
        (argv(c, out, "--prompt_key", ""), "--prompt_key"),
    ]


def test_bad_inputs_fail_before_ray_naming_the_flag(constructed, evil_model, tmp_path):  # noqa: F811
    evil, marker = evil_model
    for args_list, message in bad_cases(constructed, tmp_path, evil):
        with pytest.raises(ConfigError, match=message):
            run(args_list)
        assert not ray.is_initialized(), args_list
    assert not marker.exists(), "the custom code of the refused model ran"
    assert (tmp_path / "full" / "keep.txt").read_text() == "user data"
    assert not os.path.exists(tmp_path / "new"), "nothing is created for a refused run"


def test_cli_exits_2_with_one_line(constructed, tmp_path, capsys):
    with pytest.raises(SystemExit) as e:
        audit.main(argv(constructed, constructed["data"]))
    assert e.value.code == 2
    err = capsys.readouterr().err
    assert "openrlhf_coherent: error: --output" in err and "Traceback" not in err


def test_demo_wrong_answers_as_a_user_perturbation_file():
    """demo/audit_perturbations.py, loaded as a user's file: each kind is reward_check's wrong answer."""
    import random

    from demo.evaluate import MAX_NEW_TOKENS
    from demo.reward_check import KINDS, wrong_responses
    from demo.world import ideal_response, make_world
    from openrlhf_coherent.data_tools import perturbations as P
    from openrlhf_coherent.devmode.tiny_models import build_tokenizer

    kinds = P.load_user_perturbations(os.path.join(os.path.dirname(os.path.dirname(__file__)), "demo", "audit_perturbations.py"))
    assert list(kinds) == list(KINDS)
    spec = next(s for s in make_world(0).eval_out if s.exclude)
    correct = ideal_response(spec, random.Random(0), ordered=True)
    ref = P.Reference(3, {"spec": spec.to_dict()}, correct, build_tokenizer())
    for name, fn in kinds.items():
        text, finished = P.apply(fn, name, ref)
        expected = wrong_responses(spec, correct, random.Random(f"{spec.to_dict()}|{name}"), MAX_NEW_TOKENS)[name]
        assert (text, finished) == expected and text != correct
    assert P.apply(kinds["overlong_repeat"], "overlong_repeat", ref)[1] is False  # no EOS: cut at the limit


def test_sentence_kinds_keep_a_numbered_answer_intact():
    """Numbered steps are sentences with their line breaks kept; prose with commas is no list."""
    import random

    from openrlhf_coherent.data_tools import perturbations as P

    ref = P.Reference(line=1, row={}, text="Here are three steps.\n1. Mix the flour.\n2. Add water.\n3. Bake it.",
                      tokenizer=None, rng=random.Random(0))  # fmt: skip
    assert P.drop_last_sentence(ref) == "Here are three steps.\n1. Mix the flour.\n2. Add water."
    assert sorted(P.shuffle_sentences(ref).split("\n")) == sorted(ref.text.split("\n"))
    ref.text = "However, the answer depends on the context, and it is 42."
    assert P.drop_last_item(ref) is None
