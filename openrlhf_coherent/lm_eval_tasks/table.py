"""lm-eval's results -> one table: a row per (task, metric, filter), markdown and JSON.

lm-eval keys each metric as "metric,filter" ("exact_match,strict-match", "acc,none") with its
standard error under "metric_stderr,filter". Every metric lm-eval returns becomes a row; the
paper's headline numbers (Tables 1-4) are picked out above the full table.
"""

from __future__ import annotations

import math
from typing import Dict, List, Optional, Sequence

# (paper column, lm-eval task, lm-eval metric key). For GPQA CoT the strict filter ("The answer is
# (X)") is the one consistent with the paper's pretrained baselines scoring below chance (12.5%).
PAPER_COLUMNS = (
    ("IFEval L.Acc (instruction-level loose)", "ifeval", "inst_level_loose_acc,none"),
    ("IFEval S.Acc (instruction-level strict)", "ifeval", "inst_level_strict_acc,none"),
    ("GSM8k EM (5-shot)", "gsm8k", "exact_match,strict-match"),
    ("GPQA CoT EM", "gpqa_main_cot_n_shot", "exact_match,strict-match"),
    ("GPQA Non-CoT EM", "gpqa_main_n_shot", "acc,none"),
)


def result_rows(results: Dict) -> List[Dict]:
    """One dict per (task, metric, filter) in an lm-eval `simple_evaluate` result (merged or not)."""
    rows = []
    for task, metrics in results["results"].items():
        samples = results.get("n-samples", {}).get(task, {})
        for key, value in metrics.items():
            metric, comma, filter_name = key.partition(",")
            # Metric keys are "metric,filter"; "alias", "sample_len" and the like are bookkeeping.
            if not comma or metric.endswith("_stderr") or not isinstance(value, (int, float)):
                continue
            stderr = metrics.get(f"{metric}_stderr,{filter_name}")
            rows.append(
                {
                    "task": task,
                    "metric": metric,
                    "filter": filter_name,
                    "num_fewshot": results.get("n-shot", {}).get(task),
                    "value": float(value),
                    "stderr": float(stderr) if isinstance(stderr, (int, float)) else None,
                    "samples": samples.get("effective"),
                }
            )
    return rows


def paper_summary(rows: Sequence[Dict]) -> List[Dict]:
    """The paper's columns that these results contain, in the paper's order."""
    by_key = {(r["task"], f"{r['metric']},{r['filter']}"): r for r in rows}
    return [
        {"column": column, "task": task, "metric": key, "value": by_key[(task, key)]["value"]}
        for column, task, key in PAPER_COLUMNS
        if (task, key) in by_key
    ]


def _number(x: Optional[float]) -> str:
    if x is None or (isinstance(x, float) and math.isnan(x)):
        return "-"
    return f"{x:.4f}"


def to_markdown(model: str, rows: Sequence[Dict], summary: Sequence[Dict], settings: str) -> str:
    lines = [f"# lm-evaluation-harness results: `{model}`", "", settings, ""]
    if summary:
        lines += ["## Paper columns (SRPPO paper, Tables 1-4; percent)", ""]
        lines += ["| " + " | ".join(s["column"] for s in summary) + " |", "|" + "---|" * len(summary)]
        lines += ["| " + " | ".join(f"{100 * s['value']:.2f}" for s in summary) + " |", ""]
    lines += ["## All metrics", "", "| task | metric | filter | n-shot | value | stderr | samples |", "|---|---|---|---|---|---|---|"]
    for r in rows:
        shots = "-" if r["num_fewshot"] is None else str(r["num_fewshot"])
        samples = "-" if r["samples"] is None else str(r["samples"])
        lines.append(
            f"| {r['task']} | {r['metric']} | {r['filter']} | {shots} | {_number(r['value'])} | {_number(r['stderr'])} | {samples} |"
        )
    return "\n".join(lines) + "\n"
