"""What every benchmark shares: the machine description, summary statistics, the table, the
JSON record, benchmark-sized tiny models, and a memory sampler for a process tree."""

from __future__ import annotations

import json
import os
import platform
import statistics
import subprocess
import threading
import time
from typing import Dict, List, Optional, Sequence

RESULTS_DIR = os.path.join(os.path.dirname(os.path.abspath(__file__)), "results")


def machine() -> Dict:
    """CPU model, core count, memory, library versions, and the load when asked (other jobs on
    the machine inflate timings; the JSON keeps the load at start and end to show it)."""
    info = {"platform": platform.platform(), "python": platform.python_version(), "cpus": os.cpu_count()}
    try:
        lscpu = subprocess.run(["lscpu"], capture_output=True, text=True, timeout=10).stdout
        for line in lscpu.splitlines():
            key, _, value = line.partition(":")
            if key.strip() in ("Model name", "Core(s) per socket", "Socket(s)", "Thread(s) per core"):
                info[key.strip()] = value.strip()
    except (OSError, subprocess.SubprocessError):
        pass
    try:
        import psutil

        info["memory_gib"] = round(psutil.virtual_memory().total / 2**30, 1)
    except ImportError:
        pass
    import torch

    info["torch"] = torch.__version__
    info["torch_threads"] = torch.get_num_threads()
    info["cuda"] = torch.cuda.is_available() and torch.cuda.get_device_name(0)
    # Installed distributions, read from their metadata (nothing imported); None = not installed.
    # flash-attn None means OpenRLHF ran with an import stand-in and its non-flash-attn code paths.
    from importlib import metadata

    for dist in ("transformers", "deepspeed", "openrlhf", "ray", "vllm", "flash-attn"):
        try:
            info[dist] = metadata.version(dist)
        except metadata.PackageNotFoundError:
            info[dist] = None
    return info


def machine_line(info: Dict) -> str:
    return f"{info.get('Model name', platform.processor() or 'unknown CPU')}, {info['cpus']} cores, " + (
        f"{info.get('memory_gib', '?')} GiB RAM" + (f", GPU {info['cuda']}" if info.get("cuda") else ", no GPU")
    )


def loadavg() -> List[float]:
    return [round(x, 2) for x in os.getloadavg()]


def spread(values: Sequence[float]) -> Dict[str, float]:
    """min / median / max (and n): with other jobs on the machine the minimum is the least noisy."""
    values = list(values)
    if not values:
        return {"n": 0}
    return {"n": len(values), "min": min(values), "median": statistics.median(values), "max": max(values)}


def fmt_spread(s: Dict[str, float], digits: int = 3) -> str:
    if not s.get("n"):
        return "n/a"
    return f"{s['median']:.{digits}f} [{s['min']:.{digits}f}, {s['max']:.{digits}f}]"


def table(header: Sequence[str], rows: Sequence[Sequence]) -> str:
    """A markdown table (prints readably and pastes into the README)."""
    lines = ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    lines += ["| " + " | ".join(str(c) for c in row) + " |" for row in rows]
    return "\n".join(lines)


def write_result(name: str, record: Dict, out: Optional[str] = None) -> str:
    record.setdefault("written_at_utc", time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()))
    path = out or os.path.join(RESULTS_DIR, f"{name}.json")
    os.makedirs(os.path.dirname(os.path.abspath(path)), exist_ok=True)
    with open(path, "w") as f:
        json.dump(record, f, indent=2, sort_keys=False, allow_nan=False)
        f.write("\n")
    return path


# A larger closed vocabulary than the tests' tiny one: with ~2000 tokens a random model almost
# never samples EOS, so every variant generates (nearly) full-length responses, and the LM head
# has a realistic share of the compute.
BENCH_WORDS = [f"w{i}" for i in range(2000)]


def make_bench_models(root: str, hidden: int, layers: int, intermediate: int, heads: int) -> Dict[str, str]:
    """A random Llama as "base" and another seed as "SFT", same architecture and tokenizer
    (timings do not depend on what the weights learned)."""
    from openrlhf_coherent.devmode.tiny_models import make_tiny_llama

    size = dict(hidden_size=hidden, num_layers=layers, num_heads=heads, intermediate_size=intermediate)
    paths = {}
    for name, seed in (("base", 0), ("sft", 1)):
        path = os.path.join(root, name)
        if not os.path.exists(os.path.join(path, "model.safetensors")):
            make_tiny_llama(path, seed=seed, words=BENCH_WORDS, **size)
        paths[name] = path
    return paths


def write_prompts(path: str, n: int, words_per_prompt: int, seed: int = 0, key: str = "input") -> str:
    """`n` prompts of exactly `words_per_prompt` random vocabulary words (one token each)."""
    import random

    rng = random.Random(seed)
    with open(path, "w") as f:
        for _ in range(n):
            f.write(json.dumps({key: " ".join(rng.choice(BENCH_WORDS) for _ in range(words_per_prompt))}) + "\n")
    return path


def param_count(model_path: str) -> Dict[str, int]:
    from transformers import AutoConfig, AutoModelForCausalLM

    import torch

    config = AutoConfig.from_pretrained(model_path)
    with torch.device("meta"):
        model = AutoModelForCausalLM.from_config(config)
    total = sum(p.numel() for p in model.parameters())
    embed = model.get_input_embeddings().weight.numel()
    return {"total": total, "matmul": total - embed}


class TreeMemorySampler:
    """Peak memory of a process and all its descendants, sampled every `interval` s in a thread.

    Reports the peak of the *sum of PSS* (proportional set size: a page shared by k processes
    counts 1/k in each, so shared libraries and Ray's shared-memory object store are not
    counted once per process) and, for comparison, the peak sum of RSS (which over-counts
    shared pages). Ray's workers are descendants of the driver (ray.init starts raylet, which
    forks them), so the tree of the benchmark's subprocess covers the whole local cluster.
    """

    def __init__(self, pid: int, interval: float = 1.0):
        self.pid, self.interval = pid, interval
        self.peak_pss = self.peak_rss = 0
        self.peak_processes = 0
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)

    def __enter__(self):
        self._thread.start()
        return self

    def __exit__(self, *exc):
        self._stop.set()
        self._thread.join()

    def _run(self):
        import psutil

        while not self._stop.is_set():
            try:
                root = psutil.Process(self.pid)
                procs = [root] + root.children(recursive=True)
            except psutil.NoSuchProcess:
                break
            pss = rss = 0
            for p in procs:
                try:
                    m = p.memory_full_info()
                    pss += getattr(m, "pss", m.rss)
                    rss += m.rss
                except (psutil.NoSuchProcess, psutil.AccessDenied):
                    pass
            self.peak_pss, self.peak_rss = max(self.peak_pss, pss), max(self.peak_rss, rss)
            self.peak_processes = max(self.peak_processes, len(procs))
            self._stop.wait(self.interval)

    def result(self) -> Dict[str, float]:
        return {
            "peak_pss_gib": round(self.peak_pss / 2**30, 3),
            "peak_rss_sum_gib": round(self.peak_rss / 2**30, 3),
            "peak_processes": self.peak_processes,
            "interval_s": self.interval,
        }


def now() -> float:
    return time.perf_counter()
