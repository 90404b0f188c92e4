"""Evaluate a checkpoint on the SRPPO paper's benchmarks with lm-evaluation-harness.

    python -m openrlhf_coherent.cli.evaluate --model CKPT --output results.md \
        [--tasks paper | ifeval,gsm8k:5,...] [--device cuda] [--batch_size auto] [--limit N]

`--tasks paper` (default) = IFEval, GSM8k 5-shot, GPQA main few-shot with and without chain of
thought (see openrlhf_coherent/lm_eval_tasks/tasks.py). Writes one table as markdown (--output) and
JSON (same name, .json), with the paper's headline columns first. The model is loaded once with
lm-eval's Hugging Face backend and shared by all tasks. AlpacaEval is a separate route (generate,
then `alpaca_eval`): docs/evaluation.md.
"""

from __future__ import annotations

import argparse
import json
import math
import os
import sys
from typing import Optional, Sequence

from openrlhf_coherent.config import ConfigError, check_causal_lm, exit_status
from openrlhf_coherent.files import check_outputs
from openrlhf_coherent.lm_eval_tasks.table import paper_summary, result_rows, to_markdown
from openrlhf_coherent.lm_eval_tasks.tasks import PAPER_TASKS, check_tasks, group_by_fewshot, parse_task_specs


def parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="python -m openrlhf_coherent.cli.evaluate", description=__doc__.split("\n\n")[0])
    p.add_argument("--model", required=True, help="Checkpoint folder in Hugging Face layout (e.g. the recipe's OUTPUT_DIR/ppo or OUTPUT_DIR/sft) or a hub id")
    p.add_argument("--output", required=True, help="Markdown table to write; the JSON goes next to it (.json)")
    p.add_argument("--tasks", default="paper", help=f"'paper' (= {PAPER_TASKS}) or a comma list of lm-eval tasks, each optionally task:num_fewshot")
    p.add_argument("--include_path", action="append", default=[], help="Folder of extra lm-eval task YAMLs (repeatable)")
    p.add_argument("--device", default=None, help="cuda, cuda:0, cpu... Default: cuda if available, else cpu")
    p.add_argument("--batch_size", default=None, help="Batch size, or 'auto' (lm-eval probes GPU memory). Default: auto on CUDA, 1 on CPU")
    p.add_argument("--dtype", default="auto", help="Model dtype for lm-eval (auto, bfloat16, float32...)")
    p.add_argument("--limit", type=float, default=None, help="Examples per task (a fraction if < 1). For smoke tests only: results are then not comparable with the paper")
    p.add_argument("--apply_chat_template", action="store_true", help="Format prompts with the tokenizer's chat template (few-shot as multi-turn). The paper used lm-eval defaults (off)")
    p.add_argument("--trust_remote_code", action="store_true", help="Allow custom model code from the model folder")
    return p


def _limit(value: Optional[float]):
    """lm-eval reads an int as a count and a float < 1 as a fraction."""
    if value is None:
        return None
    if value <= 0:
        raise ConfigError(f"--limit must be > 0, got {value:g}")
    return value if value < 1 else int(value)


def check_report_outputs(markdown_path: str, json_path: str) -> None:
    """Before the model loads: both outputs writable and distinct, and an existing report is ours
    (its JSON has our keys), so a re-run replaces only what this tool wrote."""
    check_outputs([(markdown_path, "--output"), (json_path, "--output (its .json)")])
    for path in (markdown_path, json_path):
        if not os.path.exists(path):
            continue
        try:
            with open(json_path, encoding="utf-8") as f:
                ours = {"model", "rows", "paper_columns"} <= set(json.load(f))
        except (OSError, ValueError, TypeError):
            ours = False
        if not ours:
            raise ConfigError(f"--output {markdown_path}: {path} exists and is not a report of this tool; it is left untouched: choose another --output")


def check_finite_weights(model, path: str) -> None:
    """A NaN/inf weight makes every log-likelihood NaN, and lm-eval then reports chance-level
    accuracy as if it were a result: refuse the model, naming the parameter."""
    import torch

    for name, param in model.named_parameters():
        if not torch.isfinite(param).all():
            raise ConfigError(f"--model {path}: parameter {name} holds NaN/inf values; its scores would be meaningless")


def check_ifeval_offline_data() -> None:
    """lm-eval's IFEval instructions tokenize sentences with NLTK's `punkt_tab`, which it tries to
    download when the task is imported; without network (this machine, many cluster compute nodes)
    that fails or hangs, and two of its checkers then raise. Say what is needed before any model loads."""
    import nltk

    try:
        nltk.data.find("tokenizers/punkt_tab")
    except LookupError:
        raise ConfigError(
            "--tasks ifeval needs NLTK's punkt_tab data, and there may be no network here to fetch it: on a machine "
            "with network run `python -m nltk.downloader -d DIR punkt_tab`, copy DIR here and set NLTK_DATA=DIR"
        ) from None


def run(args) -> dict:
    import torch

    specs = parse_task_specs(args.tasks)
    for folder in args.include_path:
        if not os.path.isdir(folder):
            raise ConfigError(f"--include_path {folder}: no such directory")
    limit = _limit(args.limit)
    json_path = os.path.splitext(args.output)[0] + ".json"
    check_report_outputs(args.output, json_path)
    check_causal_lm(args.model, "--model", args.trust_remote_code)
    if any(s.name.startswith("ifeval") for s in specs):
        check_ifeval_offline_data()
    device = args.device or ("cuda" if torch.cuda.is_available() else "cpu")
    batch_size = args.batch_size or ("auto" if device.startswith("cuda") else 1)

    # Imported here: lm-eval's import and task index take seconds, the checks above do not.
    import lm_eval
    from lm_eval.models.huggingface import HFLM
    from lm_eval.tasks import TaskManager

    task_manager = TaskManager(include_path=args.include_path or None)
    check_tasks(specs, task_manager.all_tasks)

    lm = HFLM(pretrained=args.model, device=device, batch_size=batch_size, dtype=args.dtype, trust_remote_code=args.trust_remote_code)
    check_finite_weights(lm.model, args.model)
    merged = {"results": {}, "n-shot": {}, "n-samples": {}, "versions": {}, "configs": {}}
    for num_fewshot, names in group_by_fewshot(specs).items():
        out = lm_eval.simple_evaluate(
            model=lm,
            tasks=names,
            num_fewshot=num_fewshot,
            limit=limit,
            task_manager=task_manager,
            log_samples=False,
            apply_chat_template=args.apply_chat_template,
            fewshot_as_multiturn=args.apply_chat_template,
        )
        for key in merged:
            merged[key].update(out.get(key, {}))

    # lm-eval keeps a task's num_fewshot when its YAML pins it to 0 (IFEval does): say so.
    for spec in specs:
        actual = merged["n-shot"].get(spec.name)
        if spec.num_fewshot is not None and actual is not None and actual != spec.num_fewshot:
            print(f"[openrlhf_coherent] evaluate: {spec.name} ran {actual}-shot (its lm-eval config pins it), not {spec.num_fewshot}", file=sys.stderr)

    rows = result_rows(merged)
    bad = [f"{r.get('task')} {r.get('metric')}" for r in rows if isinstance(r.get("value"), float) and not math.isfinite(r["value"])]
    if bad:
        raise ConfigError(f"--model {args.model}: non-finite results (NaN/inf) for {', '.join(bad)}; nothing written")
    for r in rows:  # lm-eval gives a NaN stderr for a single example: undefined, written as null
        if isinstance(r.get("stderr"), float) and not math.isfinite(r["stderr"]):
            r["stderr"] = None
    summary = paper_summary(rows)
    settings = (
        f"lm-eval {lm_eval.__version__}, Hugging Face backend, device {device}, dtype {args.dtype}, batch size {batch_size}, "
        f"chat template {'on' if args.apply_chat_template else 'off'}, tasks `{args.tasks}`"
        + (f", **--limit {args.limit:g}: a smoke test, not comparable with the paper**" if limit is not None else "")
        + "."
    )
    report = {
        "model": args.model,
        "tasks": [{"name": s.name, "num_fewshot": s.num_fewshot} for s in specs],
        "settings": settings,
        "paper_columns": summary,
        "rows": rows,
        "versions": merged["versions"],
    }
    markdown = to_markdown(args.model, rows, summary, settings)
    os.makedirs(os.path.dirname(os.path.abspath(args.output)), exist_ok=True)
    with open(args.output, "w") as f:
        f.write(markdown)
    with open(json_path, "w") as f:
        json.dump(report, f, indent=2, default=str, allow_nan=False)
    print(markdown)
    print(f"[openrlhf_coherent] evaluate: wrote {args.output} and {json_path}")
    return report


def main(argv: Optional[Sequence[str]] = None) -> int:
    from openrlhf_coherent.numeric import check_parsed

    p = parser()
    args = p.parse_args(argv)
    return exit_status(lambda: (check_parsed(p, args), run(args)))


if __name__ == "__main__":
    sys.exit(main())
