"""Put on PYTHONPATH by the recipe for stock OpenRLHF train_sft/train_dpo on a machine without CUDA:
Python imports `sitecustomize` at start-up, so the CPU dev mode (import stand-ins for vllm/flash_attn,
torch.cuda no-ops, torch AdamW instead of DeepSpeed's JIT-built CPU Adam) is active before OpenRLHF loads."""

from openrlhf_coherent import devmode

devmode.apply()
