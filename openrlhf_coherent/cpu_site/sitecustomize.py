"""Put on a child process's PYTHONPATH by `launch.with_cpu_site` for stock OpenRLHF CLIs on a machine without CUDA:
Python imports `sitecustomize` at start-up, so the CPU dev mode (import stand-ins for vllm/flash_attn,
torch.cuda no-ops, torch AdamW instead of DeepSpeed's JIT-built CPU Adam) is active before OpenRLHF loads."""

from openrlhf_coherent import devmode

devmode.apply()
