"""The SeRA rounds (Algorithm 1): build D_t, train theta_t with theta_{t-1} as reference, mark done.

    t = 1:   D_1 = every input pair; train from the SFT model (theta_0), reference theta_0.
    t >= 2:  r_t = eq. 7 round reward of theta_{t-1}, theta_{t-2} (and theta_{t-3}, weight gamma);
             select-pairs keeps the global top-k input pairs by margin r_t(y_w) - r_t(y_l);
             bootstrap-pairs samples R distinct responses per prompt from theta_{t-1}, pairs
             (argmax r_t, argmin r_t) and keeps the top-k~ pairs by margin;
             D_t = both; train one epoch from theta_{t-1}, reference theta_{t-1} (eq. 6).

Selection and bootstrapping are the evaluator tools run in this process (one Ray session per
round); training is `openrlhf_coherent.cli.train_dpo` (OpenRLHF's train_dpo) in a subprocess
started by --train_launcher, so DeepSpeed's process group and the GPUs are freed between rounds.
"""

from __future__ import annotations

import contextlib
import json
import math
import os
import shlex
import shutil
import subprocess
import time
from typing import Dict, List, Sequence

from openrlhf_coherent.data_tools.output import read_rows, write_rows
from openrlhf_coherent.redact import mask_argv

from .rounds import Round, first_unfinished, invalidate_after, policies
from .selection import as_flags, bootstrap_row, offline_row, round_reward_models

TRAIN_MODULE = "openrlhf_coherent.cli.train_dpo"


def log(message: str) -> None:
    print(f"[openrlhf_coherent] sera: {message}", flush=True)


def round_sizes(args, n: int) -> Dict[str, int]:
    """k and k~ (SeRA: k = 0.7 N, k~ = 0.3 N, N = input pairs)."""
    return {"k": math.ceil(args.select_fraction * n), "k_boot": math.ceil(args.bootstrap_fraction * n)}


def run_rounds(args, train_args: Sequence[str], pairs: List[dict]) -> Dict:
    """Run rounds from the first unfinished one to args.rounds. `pairs` are the validated input
    rows (each with its input `line`). Returns what ran, for the summary."""
    root = args.output_dir
    start = first_unfinished(root, args.rounds)
    if start is None:
        log(f"all {args.rounds} rounds finished in {root}; nothing to do")
        return {"ran": [], "final_model": Round(root, args.rounds).model}
    for moved in invalidate_after(root, start):
        log(f"round {start} reruns, so a later round's data is stale: moved to {moved}")
    thetas = policies(root, args.sft_model, args.rounds)
    ran = []
    for t in range(start, args.rounds + 1):
        r = Round(root, t)
        os.makedirs(r.dir, exist_ok=True)
        t0 = time.time()
        if t == 1:
            keys = (args.prompt_key, args.chosen_key, args.rejected_key)
            rows = [offline_row(p, keys, args.apply_chat_template) for p in pairs]
            info = {"offline_pairs": len(rows), "bootstrap_pairs": 0}
        else:
            rows, info = round_dataset(args, r, thetas, len(pairs))
        write_rows(r.path("train.jsonl"), rows)
        log(f"round {t}: {len(rows)} pairs ({info}); training from {thetas[t - 1]}")
        train(args, train_args, r, init=thetas[t - 1])
        wall = round(time.time() - t0, 1)
        r.mark_done({**info, "train_pairs": len(rows), "init_and_reference": thetas[t - 1], "wall_s": wall})
        log(f"round {t} finished in {time.time() - t0:.0f} s: {r.model}")
        ran.append(t)
    return {"ran": ran, "final_model": Round(root, args.rounds).model}


def _lines_done(path: str) -> int:
    """Input lines an append-only stream already holds (a killed run's partial last line is not one)."""
    if not os.path.exists(path):
        return 0
    lines = set()
    with open(path, encoding="utf-8") as f:
        for text in f:
            if text.endswith("\n"):
                lines.add(json.loads(text)["line"])
    return len(lines)


def round_dataset(args, r: Round, thetas: Sequence[str], n: int):
    """D_t for t >= 2: select-pairs and bootstrap-pairs with the round reward, then merged."""
    from openrlhf_coherent.cli import bootstrap_pairs, select_pairs
    from openrlhf_coherent.data_tools.runner import ray_session

    sizes = round_sizes(args, n)
    models = round_reward_models(thetas, r.t, args.gamma)
    shared = ["--reward", "implicit", *as_flags(models), "--input", args.input, "--prompt_key", args.prompt_key,
              "--max_len", args.max_len, "--num_actors", args.num_actors, "--batch_tokens", args.batch_tokens,
              "--aggregate", args.aggregate, "--on_bad_row", "fail"]  # fmt: skip
    shared += ["--apply_chat_template"] if args.apply_chat_template else []
    shared += ["--input_template", args.input_template] if args.input_template else []
    shared += ["--trust_remote_code"] if args.trust_remote_code else []
    select_argv = [*shared, "--output", r.path("selected.jsonl"), "--chosen_key", args.chosen_key,
                   "--rejected_key", args.rejected_key, "--top_k", sizes["k"]]  # fmt: skip
    boot_argv = [*shared, "--output", r.path("bootstrap.jsonl"), "--num_samples", args.num_samples,
                 "--sample_rounds", args.sample_rounds, "--max_new_tokens", args.max_new_tokens,
                 "--temperature", args.temperature, "--top_p", args.top_p, "--seed", args.seed,
                 "--top_k", sizes["k_boot"]]  # fmt: skip
    # One Ray session for both tools, and none at all when a resumed round has every score and
    # sample already on disk (the tools then only re-select).
    pending = _lines_done(r.path("selected.jsonl.scored.jsonl")) < n or _lines_done(r.path("bootstrap.jsonl.candidates.jsonl")) < n
    log(f"round {r.t}: round reward {models}, k={sizes['k']}, k~={sizes['k_boot']}")
    if pending:
        from openrlhf_coherent import devmode

        devmode.apply()  # before Ray starts: import stand-ins; CPU shims (this driver) without CUDA
    with ray_session(args.num_actors) if pending else contextlib.nullcontext():
        select_pairs.run(select_pairs.parser().parse_args([str(a) for a in select_argv]))
        bootstrap_pairs.run(bootstrap_pairs.parser().parse_args([str(a) for a in boot_argv]))
    keys = (args.prompt_key, args.chosen_key, args.rejected_key)
    selected = [offline_row(p, keys, args.apply_chat_template, p["margin"]) for p in read_rows(r.path("selected.jsonl"))]
    boot = [bootstrap_row(p) for p in read_rows(r.path("bootstrap.jsonl"))]
    info = {"offline_pairs": len(selected), "bootstrap_pairs": len(boot), **sizes, "round_reward": models}
    return selected + boot, info


def train_command(args, train_args: Sequence[str], r: Round, init: str) -> List[str]:
    cmd = [*shlex.split(args.train_launcher), TRAIN_MODULE,
           "--model.model_name_or_path", init, "--ref.model_name_or_path", init,
           "--data.dataset", r.path("train.jsonl"), "--data.prompt_key", "prompt",
           "--data.chosen_key", "chosen", "--data.rejected_key", "rejected", "--data.max_len", str(args.max_len),
           "--train.max_epochs", str(args.epochs_per_round), "--model.beta", str(args.beta),
           "--dpo.loss", args.loss, "--ckpt.output_dir", r.model, "--ckpt.path", r.path("ckpt")]  # fmt: skip
    cmd += ["--data.apply_chat_template"] if args.apply_chat_template else []
    cmd += ["--data.input_template", args.input_template] if args.input_template else []
    cmd += ["--dpo.simpo_gamma", str(args.simpo_gamma)] if args.loss == "simpo" else []
    cmd += ["--coherent.trust_remote_code"] if args.trust_remote_code else []  # train_dpo's own check
    return cmd + list(train_args)


def train(args, train_args: Sequence[str], r: Round, init: str) -> None:
    """theta_t from theta_{t-1}; the model directory is rebuilt from scratch on every attempt."""
    if os.path.isdir(r.model):
        shutil.rmtree(r.model)
    cmd = train_command(args, train_args, r, init)
    with open(r.path("train.log"), "w") as f:
        f.write(shlex.join(mask_argv(cmd)) + "\n")
        f.flush()
        proc = subprocess.run(cmd, cwd=r.dir, stdout=f, stderr=subprocess.STDOUT, env=dict(os.environ, TOKENIZERS_PARALLELISM="false"))
    if proc.returncode != 0 or not os.path.exists(os.path.join(r.model, "config.json")):
        with open(r.path("train.log")) as f:
            tail = f.read()[-4000:]
        raise RuntimeError(f"round {r.t}: training failed (rc={proc.returncode}), log {r.path('train.log')}:\n{tail}")
