"""A peft LoRA adapter as a llama.cpp adapter GGUF, so that llama.cpp's server runs a tuned actor and reflector on
one base model, chosen per request (`--lora FILE`, a request's `lora` field).

llama.cpp names a layer's pair `<its tensor name>.lora_a` / `.lora_b`, keeps peft's shapes (A: rank x in,
B: out x rank) and scales by alpha / rank as peft does. It stores the query and key projections of a llama model
with each head's rows reordered for its rotary embedding (pairs interleaved, where transformers keeps two halves), so
their B matrices, whose rows are those projections' outputs, get the same reorder. The file is written once per
adapter content, next to the served model.
"""

from __future__ import annotations

import json
import re
from pathlib import Path

from r4ec import fingerprint
from r4ec.files import written_atomically
from r4ec.knowledge.backends import BackendError

LAYER_TENSORS = {
    "self_attn.q_proj": "attn_q", "self_attn.k_proj": "attn_k", "self_attn.v_proj": "attn_v",
    "self_attn.o_proj": "attn_output", "mlp.gate_proj": "ffn_gate", "mlp.up_proj": "ffn_up",
    "mlp.down_proj": "ffn_down",
}  # fmt: skip
PEFT_TENSOR = re.compile(r"base_model\.model\.model\.layers\.(\d+)\.(.+)\.lora_([AB])\.weight")
ARCHITECTURES = ("llama",)  # SmolLM2; another architecture needs its own names (and rotary reorder) checked first


def rotary_rows(weight, heads: int):
    """(out, rank) rows of a query / key projection, per head from transformers' two halves to llama.cpp's pairs."""
    out = weight.shape[0]
    return weight.reshape(heads, 2, out // heads // 2, *weight.shape[1:]).swapaxes(1, 2).reshape(weight.shape)


def model_shape(model_gguf: Path) -> tuple[str, int, int]:
    """(architecture, attention heads, key/value heads) of the served model, read from its GGUF header."""
    import gguf

    reader = gguf.GGUFReader(model_gguf)

    def value(key: str):
        field = reader.get_field(key)
        if field is None:
            raise BackendError(f"{model_gguf.name}: no {key} in its header")
        return field.contents()

    arch = value("general.architecture")
    return arch, int(value(f"{arch}.attention.head_count")), int(value(f"{arch}.attention.head_count_kv"))


def adapter_tensors(adapter_dir: Path, heads: int, kv_heads: int) -> dict[str, object]:
    """{llama.cpp tensor name: float32 array} for every LoRA pair of a peft adapter folder."""
    import numpy as np
    from safetensors.numpy import load_file

    tensors = {}
    for name, array in load_file(adapter_dir / "adapter_model.safetensors").items():
        match = PEFT_TENSOR.fullmatch(name)
        if match is None or match.group(2) not in LAYER_TENSORS:
            raise BackendError(f"{adapter_dir}: tensor {name} has no llama.cpp counterpart")
        layer, module, which = int(match.group(1)), match.group(2), match.group(3)
        array = array.astype(np.float32)
        if which == "B" and module in ("self_attn.q_proj", "self_attn.k_proj"):
            array = rotary_rows(array, heads if module == "self_attn.q_proj" else kv_heads)
        tensors[f"blk.{layer}.{LAYER_TENSORS[module]}.weight.lora_{which.lower()}"] = np.ascontiguousarray(array)
    return tensors


def _checked_config(adapter_dir: Path) -> dict:
    path = adapter_dir / "adapter_config.json"
    if not path.is_file() or not (adapter_dir / "adapter_model.safetensors").is_file():
        raise BackendError(f"{adapter_dir}: not a peft adapter folder (adapter_config.json, adapter_model.safetensors)")
    config = json.loads(path.read_text())
    if config.get("peft_type") != "LORA" or any(config.get(k) for k in ("use_rslora", "use_dora", "rank_pattern", "alpha_pattern")):
        raise BackendError(f"{adapter_dir}: only plain LoRA adapters can be served by llama.cpp (no rsLoRA, DoRA)")
    return config


def adapter_gguf(adapter_dir: Path, model_gguf: Path, out_dir: Path) -> Path:
    """The adapter as a llama.cpp GGUF for `model_gguf`, written once (named by the adapter's content hash)."""
    import gguf

    config = _checked_config(adapter_dir)
    arch, heads, kv_heads = model_shape(model_gguf)
    if arch not in ARCHITECTURES:
        raise BackendError(f"{model_gguf.name}: LoRA adapters on a {arch} model are not supported by r4ec yet")
    digest = fingerprint.of_folder(adapter_dir).removeprefix("sha256:")[:12]
    target = out_dir / f"{adapter_dir.parent.name}-{adapter_dir.name}.{digest}.lora.gguf"
    if target.is_file():
        return target
    with written_atomically(target) as partial:
        writer = gguf.GGUFWriter(partial, arch)
        writer.add_type(gguf.GGUFType.ADAPTER)
        writer.add_string(gguf.Keys.Adapter.TYPE, "lora")
        writer.add_float32(gguf.Keys.Adapter.LORA_ALPHA, float(config["lora_alpha"]))
        for name, array in adapter_tensors(adapter_dir, heads, kv_heads).items():
            writer.add_tensor(name, array)
        writer.write_header_to_file()
        writer.write_kv_data_to_file()
        writer.write_tensors_to_file()
        writer.close()
    return target
