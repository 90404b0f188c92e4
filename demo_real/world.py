"""The real-model demo's world: short answers about everyday topics under IFEval-style verifiable
instructions, graded by lm-eval's own IFEval checkers (demo_real/checkers.py).

A prompt is a request about a topic plus one instruction, worded exactly as IFEval words it::

    Tell me about the moon. Your entire response should be in English, and in all lowercase
    letters. No capital letters are allowed.

Instruction kinds, split three ways (as the issue asks), one IFEval checker each:

* demonstrated (SFT demonstrations, PPO prompts, evaluation): all lowercase, exactly N bullet
  points, a required ending phrase;
* PPO prompts only (no demonstration; PPO prompts and evaluation): all capital letters, a
  postscript starting with P.S./P.P.S, no commas;
* held out (evaluation only): JSON output, a title in <<double angular brackets>>, fewer than N
  words.

Topics are split too: demonstrations, evaluation prompts and PPO prompts use disjoint topic lists,
so the three splits are disjoint by prompt text (tests/test_demo_real.py checks it). Only the
demonstration topics carry facts (hand-written, short sentences without commas): a demonstration's
response is two or three of them, transformed to satisfy its instruction (`ideal_response`).

The "base" of this demo is SmolLM2-135M-Instruct itself (the paper's base is a pretrained model
that SFT turns into an instruction follower; here the instruct model plays the base, and SFT on a
handful of demonstrations teaches the verifiable-format behaviour). The coherent reward
log p_SFT(y|x) - log p_base(y|x) then scores what those demonstrations changed.

Everything is a deterministic function of the sizes and `seed` (`make_world`).
"""

from __future__ import annotations

import json
import random
from dataclasses import dataclass
from typing import Dict, Iterable, List, Optional, Sequence, Tuple

from demo_real.checkers import describe, grade

# kind -> (lm-eval instruction id, parameter choices: list of kwargs dicts)
KINDS: Dict[str, Tuple[str, List[Dict]]] = {
    "lowercase": ("change_case:english_lowercase", [{}]),
    "bullets": ("detectable_format:number_bullet_lists", [{"num_bullets": 2}, {"num_bullets": 3}]),
    "end_phrase": (
        "startend:end_checker",
        [{"end_phrase": "Any other questions?"}, {"end_phrase": "Is there anything else I can help with?"}],
    ),
    "capital": ("change_case:english_capital", [{}]),
    "postscript": ("detectable_content:postscript", [{"postscript_marker": "P.S."}, {"postscript_marker": "P.P.S"}]),
    "no_comma": ("punctuation:no_comma", [{}]),
    "json": ("detectable_format:json_format", [{}]),
    "title": ("detectable_format:title", [{}]),
    "word_limit": (
        "length_constraints:number_words",
        [{"relation": "less than", "num_words": 20}, {"relation": "less than", "num_words": 30}],
    ),
}
DEMONSTRATED = ("lowercase", "bullets", "end_phrase")
PPO_ONLY = ("capital", "postscript", "no_comma")
HELD_OUT = ("json", "title", "word_limit")
GROUPS = (("demonstrated", DEMONSTRATED), ("ppo_only", PPO_ONLY), ("held_out", HELD_OUT))

REQUESTS = (
    "Tell me about {t}.",
    "Write a short answer about {t}.",
    "Describe {t} briefly.",
    "What do you know about {t}?",
    "Give me a few facts about {t}.",
)

# Demonstration topics, with facts: short sentences, no commas (so every transformation below
# keeps them valid), English (langdetect must recognise them when lowercased or capitalised).
DEMO_TOPICS: Dict[str, Tuple[str, ...]] = {
    "the moon": ("The moon orbits the Earth.", "It has no air to breathe.", "Its light is reflected sunlight.",
                 "People first walked on it in 1969."),
    "honey bees": ("Honey bees live in large colonies.", "They make honey from flower nectar.",
                   "Each hive has one queen.", "Bees help plants grow fruit."),
    "bicycles": ("A bicycle has two wheels.", "Riding one is good exercise.", "Bicycles do not burn any fuel.",
                 "Many people ride them to work."),
    "the ocean": ("The ocean covers most of the Earth.", "Its water is salty.", "Whales and fish live in it.",
                  "Waves move across its surface."),
    "coffee": ("Coffee is made from roasted beans.", "It contains caffeine.", "Many people drink it in the morning.",
               "Brazil grows a lot of coffee."),
    "volcanoes": ("A volcano is an opening in the crust.", "Hot melted rock comes out of it.",
                  "Some volcanoes are asleep for centuries.", "Their ash can make soil rich."),
    "libraries": ("A library lends books for free.", "It is a quiet place to study.", "Many libraries also lend films.",
                  "Librarians help people find information."),
    "rain": ("Rain falls from clouds.", "It gives water to plants and rivers.", "Warm air carries water vapour up.",
             "Too much rain can cause floods."),
    "chess": ("Chess is a game for two players.", "Each player starts with sixteen pieces.",
              "The goal is to trap the king.", "It is played on a board of squares."),
    "trees": ("Trees make oxygen from sunlight.", "Their roots hold the soil in place.", "Some trees live for centuries.",
              "Wood from trees is used to build houses."),
    "the sun": ("The sun is a star.", "It gives the Earth light and heat.", "It is made mostly of hydrogen.",
                "Its light reaches us in about eight minutes."),
    "bread": ("Bread is made from flour and water.", "Yeast makes the dough rise.", "It is baked in an oven.",
              "People have eaten bread for thousands of years."),
}
EVAL_TOPICS = (
    "elephants", "the desert", "snow", "trains", "tea", "mountains", "the piano", "football", "penguins",
    "the internet", "gardens", "rivers", "cheese", "the brain", "clocks", "owls", "islands", "pizza",
    "the wind", "museums", "dolphins", "candles", "maps", "lightning",
)  # fmt: skip
PPO_TOPICS = (
    "cats", "dogs", "apples", "the stars", "forests", "bridges", "cars", "music", "water", "the city",
    "schools", "butterflies", "rice", "the sky", "farms", "horses", "boats", "paper", "the kitchen",
    "frogs", "shoes", "the beach", "lakes", "milk", "airplanes", "the garden hose", "winter", "summer",
    "birds", "hospitals", "clouds", "soup", "the guitar", "tigers", "books", "computers", "fish",
    "the park", "salt", "wolves", "eggs", "the road", "bananas", "phones", "caves", "ants", "kites", "soap",
)  # fmt: skip
POSTSCRIPT_TEXT = "I hope this helps."


@dataclass(frozen=True)
class Instruction:
    """One prompt: a request about `topic` plus one verifiable instruction of `kind`."""

    topic: str
    kind: str
    kwargs_json: str = "{}"  # the checker's build_description kwargs, as sorted JSON (hashable)
    request: int = 0

    @property
    def instruction_id(self) -> str:
        return KINDS[self.kind][0]

    @property
    def kwargs(self) -> Dict:
        return json.loads(self.kwargs_json)

    @property
    def group(self) -> str:
        return next(name for name, kinds in GROUPS if self.kind in kinds)

    @property
    def text(self) -> str:
        """The user message (no chat template)."""
        return f"{REQUESTS[self.request].format(t=self.topic)} {describe(self.instruction_id, self.kwargs)}"

    def check(self, response: str, finished: bool = True) -> Tuple[bool, str]:
        return grade(self.instruction_id, self.kwargs, response, finished)

    def to_dict(self) -> dict:
        return {"topic": self.topic, "kind": self.kind, "kwargs": self.kwargs, "request": self.request}

    @classmethod
    def from_dict(cls, d: dict) -> "Instruction":
        return cls(d["topic"], d["kind"], json.dumps(d.get("kwargs") or {}, sort_keys=True), int(d.get("request", 0)))


def ideal_response(spec: Instruction, facts: Sequence[str], n_facts: int = 2) -> str:
    """A response built from `facts` that satisfies `spec`'s instruction (for the demonstrations,
    and the tests' check that the checkers accept them)."""
    kw = spec.kwargs
    if spec.kind == "bullets":
        n_facts = kw["num_bullets"]
    body = " ".join(facts[:n_facts])
    if spec.kind == "lowercase":
        return body.lower()
    if spec.kind == "capital":
        return body.upper()
    if spec.kind == "bullets":
        return "\n".join(f"* {f}" for f in facts[:n_facts])
    if spec.kind == "end_phrase":
        return f"{body} {kw['end_phrase']}"
    if spec.kind == "postscript":
        return f"{body}\n\n{kw['postscript_marker']} {POSTSCRIPT_TEXT}"
    if spec.kind == "no_comma":
        return body
    if spec.kind == "json":
        return json.dumps({"topic": spec.topic, "facts": list(facts[:n_facts])}, indent=1)
    if spec.kind == "title":
        return f"<<{spec.topic.title()}>>\n{body}"
    if spec.kind == "word_limit":
        return facts[0]
    raise ValueError(spec.kind)


@dataclass
class World:
    seed: int
    demos: List[Tuple[Instruction, str]]
    eval_prompts: List[Instruction]  # grouped: demonstrated, ppo_only, held_out (equal counts)
    ppo_prompts: List[Instruction]

    def eval_group(self, group: str) -> List[Instruction]:
        return [s for s in self.eval_prompts if s.group == group]


def _all_specs(topics: Iterable[str], kinds: Iterable[str]) -> List[Instruction]:
    return [
        Instruction(topic, kind, json.dumps(kw, sort_keys=True), r)
        for topic in topics
        for kind in kinds
        for kw in KINDS[kind][1]
        for r in range(len(REQUESTS))
    ]


def _balanced(rng: random.Random, specs: List[Instruction], kinds: Sequence[str], n: int) -> List[Instruction]:
    """`n` specs, kinds in turn (as equal as `n` allows), topics spread: each draw prefers a topic
    used least so far."""
    by_kind = {k: [s for s in specs if s.kind == k] for k in kinds}
    for pool in by_kind.values():
        rng.shuffle(pool)
    used: Dict[str, int] = {}
    out = []
    for i in range(n):
        pool = by_kind[kinds[i % len(kinds)]]
        best = min(range(len(pool)), key=lambda j: used.get(pool[j].topic, 0))
        spec = pool.pop(best)
        used[spec.topic] = used.get(spec.topic, 0) + 1
        out.append(spec)
    return out


def make_world(seed: int = 0, n_demos: int = 12, n_eval_per_group: int = 16, n_ppo: int = 24) -> World:
    """Demonstrations (demonstrated kinds, demo topics), evaluation prompts (`n_eval_per_group` of
    each group, evaluation topics) and PPO prompts (demonstrated and PPO-only kinds, PPO topics)."""
    rng = random.Random(seed)
    demo_specs = _balanced(rng, _all_specs(DEMO_TOPICS, DEMONSTRATED), DEMONSTRATED, n_demos)
    n_facts = [2, 3]
    demos = [(s, ideal_response(s, DEMO_TOPICS[s.topic], n_facts[i % 2])) for i, s in enumerate(demo_specs)]
    evals = []
    for _, kinds in GROUPS:
        evals += _balanced(rng, _all_specs(EVAL_TOPICS, kinds), kinds, n_eval_per_group)
    ppo = _balanced(rng, _all_specs(PPO_TOPICS, DEMONSTRATED + PPO_ONLY), DEMONSTRATED + PPO_ONLY, n_ppo)
    rng.shuffle(ppo)
    return World(seed, demos, evals, ppo)


def write_prompts_jsonl(path: str, specs: Iterable[Instruction]) -> str:
    """`{"input": prompt, "label": spec-json}` lines for OpenRLHF's prompt dataset."""
    with open(path, "w") as f:
        for spec in specs:
            f.write(json.dumps({"input": spec.text, "label": json.dumps(spec.to_dict())}) + "\n")
    return path


def label_spec(label: Optional[str]) -> Instruction:
    return Instruction.from_dict(json.loads(label))
