"""The demo's synthetic world: list-following instructions over word categories.

Task. A prompt asks for `k` distinct members of a category, phrased one of 28 ways, with an
optional exclusion constraint::

    user : please list three animals but not cat assistant : dog , bird , cow </s>

The ideal response is exactly `k` distinct words of the category, none of them the excluded word,
joined by " , ", then EOS. `check(spec, text)` grades a response exactly and says why it failed
(truncated, format, not in category, excluded word, duplicate, wrong count). Six categories of
eight words; counts two, three, four.

Why this tests the paper's claim (SRPPO section 4: with few demonstrations SFT overfits; PPO on the
coherent reward with extra prompts generalises better, SFT trained longer does not):

* Latent knowledge comes from pretraining. `corpus()` is prose: membership ("the cow is an
  animal ."), category -> members ("some foods are bread , rice and egg ."), lists with their
  count ("in the shop there are three tools : hammer , saw and rope ."), chit-chat dialogues
  ("user : what is a saw ? assistant : the saw is a tool ."). It never answers an instruction
  with a bare list: the base model scores 0 on the task (it replies in prose).
* The behaviour is taught only by a few demonstrations (32) covering PART of the prompt space,
  "in-domain": four categories (animals, colors, foods, tools) and counts two/three. Held-out
  "out-of-domain" prompts are everything else: the two other categories (vehicles, plants) and
  count four. SFT on so few examples overfits: it may answer "red , blue" to "list two plants"
  and three items to "give me four animals"; more SFT epochs mainly raise in-domain accuracy.
* The coherent reward log p_SFT(y|x) - log p_base(y|x) scores what SFT added to the base: the
  bare-list format, stopping at the count, the exclusion, applied to knowledge the base already
  has. That is instruction following (as in IFEval, where the paper gains most), not a fact the
  base states in the answer's form (design.md 1.7: then subtracting log p_base penalises correct
  answers). `demo.reward_check` measures the reward's ranking before any training.
* PPO prompts (prompts only, all categories and counts) are the paper's "additional prompts":
  easy to obtain, without responses.

Two conventions make this learnable at ~0.25M parameters (both knobs of `make_world`): prose
lists appear in the corpus (without them every list token is ~10 nats unlikely under the base
and the summed reward mostly counts tokens), and lists follow each category's listed order
(`CATEGORIES`), in the corpus and in the demonstrations (with random order the tiny models write
"boat , boat , boat"). The checker accepts any order.

Everything is a deterministic function of `seed` (`make_world(seed)`); splits are disjoint by
prompt text: demonstrations, held-out eval (in-domain / out-of-domain), PPO prompts and a
validation split (`val_in` / `val_out`, same mix as eval) for choosing settings without the test
prompts.
"""

from __future__ import annotations

import dataclasses
import json
import random
from dataclasses import dataclass, field
from typing import Dict, Iterable, List, Optional, Sequence, Tuple

# category name (plural, as asked in prompts) -> (singular label with article, members)
CATEGORIES: Dict[str, Tuple[str, Tuple[str, ...]]] = {
    "animals": ("an animal", ("cat", "dog", "bird", "fish", "horse", "cow", "pig", "duck")),
    "colors": ("a color", ("red", "blue", "green", "yellow", "black", "white", "pink", "brown")),
    "foods": ("a food", ("bread", "rice", "cake", "soup", "apple", "egg", "cheese", "milk")),
    "tools": ("a tool", ("hammer", "saw", "drill", "knife", "rope", "brush", "shovel", "axe")),
    "vehicles": ("a vehicle", ("car", "bus", "train", "boat", "bike", "truck", "plane", "ship")),
    "plants": ("a plant", ("tree", "flower", "grass", "rose", "oak", "fern", "moss", "vine")),
}
COUNT_WORDS = {2: "two", 3: "three", 4: "four"}
# How the instruction is phrased ("{n}" = count word, "{c}" = category name): 10 openings x 3
# endings (less "please ... please") = 28 phrasings; {x} is the optional exclusion, so every split can be disjoint by prompt text with few exclusions.
_OPENINGS = ("list", "name", "give me", "tell me", "write", "please list", "please name",
             "can you list", "can you name", "i want")  # fmt: skip
_ENDINGS = ("", " please", " now")
_PAIRS = [(o, e) for o in _OPENINGS for e in _ENDINGS if not (o.startswith("please") and e == " please")]
PHRASINGS = tuple(f"{o} {{n}} {{c}}{{x}}{e}" for o, e in _PAIRS)
PHRASING_OPENINGS = tuple(o for o, _ in _PAIRS)
SEPARATOR = " , "

# The part of the prompt space the demonstrations cover ("in-domain").
IN_DOMAIN_CATEGORIES = ("animals", "colors", "foods", "tools")
IN_DOMAIN_COUNTS = (2, 3)
IN_DOMAIN_OPENINGS = _OPENINGS

# Failure reasons returned by `check` (first failing rule wins, in this order).
REASONS = ("ok", "truncated", "format", "not_in_category", "excluded_word", "duplicate", "wrong_count")


@dataclass(frozen=True)
class PromptSpec:
    """One instruction. `text` is the user message (no chat template)."""

    category: str
    count: int
    exclude: Optional[str] = None
    phrasing: int = 0

    @property
    def text(self) -> str:
        x = f" but not {self.exclude}" if self.exclude else ""
        return PHRASINGS[self.phrasing].format(n=COUNT_WORDS[self.count], c=self.category, x=x)

    @property
    def in_domain(self) -> bool:
        return (
            self.category in IN_DOMAIN_CATEGORIES
            and self.count in IN_DOMAIN_COUNTS
            and PHRASING_OPENINGS[self.phrasing] in IN_DOMAIN_OPENINGS
        )

    @property
    def allowed(self) -> Tuple[str, ...]:
        return tuple(w for w in CATEGORIES[self.category][1] if w != self.exclude)

    def to_dict(self) -> dict:
        return dataclasses.asdict(self)

    @classmethod
    def from_dict(cls, d: dict) -> "PromptSpec":
        return cls(d["category"], int(d["count"]), d.get("exclude"), int(d.get("phrasing", 0)))


@dataclass
class World:
    """All data of one seed. `demos` are (spec, ideal response) pairs; the rest are prompts only."""

    seed: int
    demos: List[Tuple[PromptSpec, str]]
    eval_in: List[PromptSpec]
    eval_out: List[PromptSpec]
    ppo_prompts: List[PromptSpec]
    corpus: List[str]
    # Validation split (same in/out-of-domain mix as eval_in/eval_out): for choosing settings,
    # so that the held-out eval_* prompts are read only for a final table.
    val_in: List[PromptSpec] = field(default_factory=list)
    val_out: List[PromptSpec] = field(default_factory=list)

    @property
    def eval_prompts(self) -> List[PromptSpec]:
        return self.eval_in + self.eval_out

    @property
    def val_prompts(self) -> List[PromptSpec]:
        return self.val_in + self.val_out


def all_prompt_specs() -> List[PromptSpec]:
    """The whole prompt space (6 categories x 3 counts x 28 phrasings x 9 exclusion options)."""
    specs = []
    for cat, (_, words) in CATEGORIES.items():
        for count in COUNT_WORDS:
            for phrasing in range(len(PHRASINGS)):
                for exclude in (None,) + words:
                    specs.append(PromptSpec(cat, count, exclude, phrasing))
    return specs


def ideal_response(spec: PromptSpec, rng: random.Random, ordered: bool = False) -> str:
    """`spec.count` distinct allowed words joined by " , " (no EOS): a random subset, in random
    order or (`ordered`) in the category's listed order."""
    words = rng.sample(spec.allowed, spec.count)
    if ordered:
        words.sort(key=spec.allowed.index)
    return SEPARATOR.join(words)


def check(spec: PromptSpec, response: str, finished: bool = True) -> Tuple[bool, str]:
    """Grade a decoded response exactly. Returns (ok, reason), reason in `REASONS`.

    `finished` is False when generation hit the length limit without EOS ("truncated").
    Items are split on ","; each must be one word of the category, distinct, not excluded, and
    there must be exactly `spec.count` of them.
    """
    if not finished:
        return False, "truncated"
    items = [item.strip() for item in response.strip().split(",")]
    if not items or any(len(item.split()) != 1 for item in items):
        return False, "format"
    members = CATEGORIES[spec.category][1]
    if any(item not in members for item in items):
        return False, "not_in_category"
    if spec.exclude is not None and spec.exclude in items:
        return False, "excluded_word"
    if len(set(items)) != len(items):
        return False, "duplicate"
    if len(items) != spec.count:
        return False, "wrong_count"
    return True, "ok"


def vocabulary() -> List[str]:
    """Every word prompts, responses and the corpus use (for the word-level tokenizer)."""
    words = []
    for text in _CORPUS_VOCAB_TEXT + [p.format(n="", c="", x="") for p in PHRASINGS]:
        words.extend(text.replace(",", " , ").split())
    for cat, (label, members) in CATEGORIES.items():
        words += [cat, *label.split(), *members]
    words += list(COUNT_WORDS.values()) + ["but", "not", "user", "assistant", ":", ",", ".", "?", "!"]
    seen, out = set(), []
    for w in words:
        if w not in seen:
            seen.add(w)
            out.append(w)
    return out


def make_world(
    seed: int = 0,
    n_demos: int = 32,
    n_eval_in: int = 64,
    n_eval_out: int = 64,
    n_ppo: int = 256,
    n_corpus: int = 6000,
    exclusion_rate: float = 0.3,
    prose_lists: bool = True,
    ordered_demos: bool = True,
    ordered_lists: bool = True,
    n_val_in: int = 64,
    n_val_out: int = 64,
) -> World:
    """Build the world of `seed`. Splits are disjoint by prompt; demos, eval-in and val-in are
    in-domain, eval-out and val-out out-of-domain.

    `exclusion_rate`: fraction of prompts (in every split) carrying a "but not X" constraint.
    `prose_lists`, `ordered_lists`: see `corpus`. `ordered_demos`: demonstrations list their
    words in the category's listed order (`CATEGORIES`), the convention the corpus's prose lists
    follow with `ordered_lists`; the checker accepts any order.
    """
    rng = random.Random(seed)
    space = all_prompt_specs()
    # Draw with the exclusion rate: first pick whether a prompt has an exclusion, then a spec.
    with_ex = [s for s in space if s.exclude]
    without = [s for s in space if not s.exclude]

    def take(n: int, pred) -> List[PromptSpec]:
        out = []
        for _ in range(n):
            pool = with_ex if rng.random() < exclusion_rate else without
            matching = [i for i, s in enumerate(pool) if pred(s)]
            if not matching:  # that pool ran dry for this predicate: use the other one
                pool = without if pool is with_ex else with_ex
                matching = [i for i, s in enumerate(pool) if pred(s)]
            out.append(pool.pop(rng.choice(matching)))
        return out

    in_dom = lambda s: s.in_domain  # noqa: E731
    out_dom = lambda s: not s.in_domain  # noqa: E731
    demo_specs = take(n_demos, in_dom)
    eval_in = take(n_eval_in, in_dom)
    eval_out = take(n_eval_out, out_dom)
    ppo = take(n_ppo, lambda s: True)
    demos = [(s, ideal_response(s, rng, ordered_demos)) for s in demo_specs]
    # The validation split is drawn last, from what the other splits left in the pools: every
    # earlier split stays exactly what it was before the split existed (same rng draws, in order),
    # so results recorded before it remain reproducible.
    val_in = take(n_val_in, in_dom)
    val_out = take(n_val_out, out_dom)
    world_corpus = corpus(seed, n_corpus, prose_lists, ordered_lists)
    return World(seed, demos, eval_in, eval_out, ppo, world_corpus, val_in, val_out)


# ---------------------------------------------------------------------------------------------
# Pretraining corpus: prose that carries category membership, counting and the chat frame, but
# never an instruction answered by a comma-separated list.
# ---------------------------------------------------------------------------------------------

_CORPUS_VOCAB_TEXT = [
    "the a an is are of and in on with i you he she we they it this that my your his her",
    "see saw like likes have has eat ate use used want wants field farm sky house garden shop road",
    "there here some many all kind kinds what which who yes no do does can please give me name list",
    "hello hi how good fine thanks thank day today one five count wrote word words know now tell write",
    "also too very small big old new not favorite",
]
def _a(word: str) -> str:
    return "an" if word[0] in "aeiou" else "a"


def corpus(seed: int, n_docs: int = 6000, prose_lists: bool = True, ordered_lists: bool = True) -> List[str]:
    """`n_docs` short documents (1-3 sentences or one dialogue turn), deterministic in `seed`.

    `prose_lists`: also write lists of category members the way prose does ("some foods are
    bread , rice and soup .", "there are three tools : a , b and c ."), always with "and" before
    the last item and never as a reply to an instruction. A real base model has seen lists;
    without them the base finds every token of a list answer ~10 nats unlikely and the summed
    coherent reward mostly counts tokens (each extra item earns ~+15 whatever the count asked).
    `ordered_lists`: prose lists keep the category's listed order ("cat , bird and duck", never
    "duck , cat"). A ~0.25M-parameter base trained for seconds does not learn "no repeats" from
    random-order lists (it writes "boat , boat and boat"); in a fixed order distinctness is a
    local pattern it learns, and SFT inherits it.
    """
    rng = random.Random(seed * 7919 + 1)
    cats = list(CATEGORIES)
    people = ["i", "he", "she", "we", "they", "you"]
    places = ["field", "farm", "house", "garden", "shop", "road"]
    counts = ["one", "two", "three", "four", "five"]

    def member(cat=None):
        cat = cat or rng.choice(cats)
        return cat, rng.choice(CATEGORIES[cat][1])

    def prose_list(cat: str, k: int) -> str:
        words = rng.sample(CATEGORIES[cat][1], k)
        if ordered_lists:
            words.sort(key=CATEGORIES[cat][1].index)
        return " , ".join(words[:-1]) + " and " + words[-1]

    def sentence() -> str:
        kind = rng.randrange(14 if prose_lists else 12)
        if kind == 12:  # prose lists, category first
            cat, k = rng.choice(cats), rng.randint(2, 5)
            return rng.choice(
                [
                    f"some {cat} are {prose_list(cat, k)} .",
                    f"{rng.choice(people)} {rng.choice(['see', 'like', 'have', 'want'])} {prose_list(cat, k)} .",
                ]
            )
        if kind == 13:  # prose lists with their count
            cat, k = rng.choice(cats), rng.randint(2, 5)
            return f"in the {rng.choice(places)} there are {counts[k - 1]} {cat} : {prose_list(cat, k)} ."
        if kind >= 10:  # category -> member direction (the task needs this one)
            cat = rng.choice(cats)
            noun = CATEGORIES[cat][0].split()[1]
            w1, w2 = rng.sample(CATEGORIES[cat][1], 2)
            return rng.choice(
                [f"one {noun} is the {w1} .", f"some {cat} are {w1} and {w2} .", f"my favorite {noun} is {w1} ."]
            )
        if kind == 0:  # membership
            cat, w = member()
            return f"the {w} is {CATEGORIES[cat][0]} ."
        if kind == 1:  # pair membership
            cat = rng.choice(cats)
            w1, w2 = rng.sample(CATEGORIES[cat][1], 2)
            return f"{w1} and {w2} are {cat} ."
        if kind == 2:  # negative membership
            cat, w = member()
            other = rng.choice([c for c in cats if c != cat])
            return f"the {w} is not {CATEGORIES[other][0]} , it is {CATEGORIES[cat][0]} ."
        if kind == 3:  # scenes with colors
            _, w = member(rng.choice(["animals", "vehicles", "plants", "foods", "tools"]))
            _, c = member("colors")
            return f"{rng.choice(people)} {rng.choice(['see', 'saw', 'like', 'have'])} a {c} {w} ."
        if kind == 4:  # eating
            f1, f2 = rng.sample(CATEGORIES["foods"][1], 2)
            return f"{rng.choice(people)} {rng.choice(['eat', 'ate', 'like', 'want'])} {f1} and {f2} ."
        if kind == 5:  # using tools / vehicles
            _, t = member(rng.choice(["tools", "vehicles"]))
            return f"{rng.choice(people)} {rng.choice(['used', 'have', 'saw', 'want'])} the {t} ."
        if kind == 6:  # place scenes
            _, w = member(rng.choice(["animals", "plants", "vehicles"]))
            return f"there is a {w} in the {rng.choice(places)} ."
        if kind == 7:  # counting and quantities, no lists of category members
            n = rng.randrange(2, 6)
            if rng.random() < 0.5:
                return "i count " + " , ".join(counts[:n]) + " ."
            cat = rng.choice(cats)
            return f"there are {counts[n - 1]} {cat} in the {rng.choice(places)} ."
        if kind == 8:  # instruction words in prose
            cat, w = member()
            return rng.choice(
                [
                    f"please give me the {w} .",
                    f"can you name {CATEGORIES[cat][0]} ?",
                    f"{rng.choice(people)} wrote a list of {cat} .",
                    "give me the {} but not the {} .".format(*rng.sample(CATEGORIES[cat][1], 2)),
                    f"i know many {cat} .",
                ]
            )
        cat, w = member()
        return f"{rng.choice(people)} {rng.choice(['like', 'have', 'see'])} the {w} too ."

    def dialogue() -> str:
        kind = rng.randrange(6 if prose_lists else 4)
        cat, w = member()
        if kind == 4:
            q, a = f"what {cat} do you like ?", f"i like {prose_list(cat, rng.randint(2, 4))} ."
        elif kind == 5:
            q, a = f"do you know some {cat} ?", f"yes , {prose_list(cat, rng.randint(2, 4))} are {cat} ."
        elif kind == 0:
            q, a = f"what is {_a(w)} {w} ?", f"the {w} is {CATEGORIES[cat][0]} ."
        elif kind == 1:
            q, a = f"do you like the {w} ?", rng.choice([f"yes , i like the {w} .", f"no , i do not like the {w} ."])
        elif kind == 2:
            q, a = rng.choice(["hello", "hi"]), rng.choice(["hello ! how are you ?", "hi , good day !"])
        else:
            q, a = f"is the {w} {CATEGORIES[cat][0]} ?", f"yes , it is {CATEGORIES[cat][0]} ."
        return f"user : {q} assistant : {a}"

    docs = []
    for _ in range(n_docs):
        if rng.random() < 0.15:
            docs.append(dialogue())
        else:
            docs.append(" ".join(sentence() for _ in range(rng.randint(1, 3))))
    return docs


# ---------------------------------------------------------------------------------------------
# Files in the formats OpenRLHF reads
# ---------------------------------------------------------------------------------------------


def write_sft_jsonl(path: str, demos: Sequence[Tuple[PromptSpec, str]]) -> str:
    """`{"input": prompt, "output": response}` lines: for `train_sft --data.apply_chat_template
    --data.input_key input --data.output_key output`."""
    with open(path, "w") as f:
        for spec, response in demos:
            f.write(json.dumps({"input": spec.text, "output": response, "spec": spec.to_dict()}) + "\n")
    return path


def write_prompts_jsonl(path: str, specs: Iterable[PromptSpec]) -> str:
    """`{"input": prompt, "label": spec-json}` lines: OpenRLHF's prompt dataset (`--data.input_key
    input --data.label_key label`); the label lets a checker grade rollouts."""
    with open(path, "w") as f:
        for spec in specs:
            f.write(json.dumps({"input": spec.text, "label": json.dumps(spec.to_dict())}) + "\n")
    return path
