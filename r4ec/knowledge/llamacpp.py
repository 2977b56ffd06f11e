"""llama.cpp's server as the knowledge engine: continuous batching over N slots and a prompt cache (DESIGN §4).

`scripts/build_llama_cpp.sh` (run by setup) builds it from the llama-cpp-python sdist into `.venv/llama.cpp`. The
knowledge job starts one server per model on 127.0.0.1 for the length of its run (`LlamaServer`) and its Spark tasks
reach it through `LlamaCppBackend`. The model file is a GGUF: the shipped SmolLM2 re-quantized once to a type with
a fast path on this CPU, or any local GGUF (the Qwen2.5-Coder models of `local_models`).
"""

from __future__ import annotations

import ctypes
import json
import logging
import os
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

from r4ec import fingerprint
from r4ec.files import written_atomically
from r4ec.knowledge.backends import BackendError, adapter_ids
from r4ec.knowledge.gguf_lora import adapter_gguf

log = logging.getLogger(__name__)


def install_dir() -> Path:
    return Path(os.environ.get("R4EC_LLAMA_CPP") or Path(sys.prefix) / "llama.cpp")


def binary(name: str) -> Path:
    path = install_dir() / "bin" / name
    if not path.is_file():
        raise BackendError(f"{path} not found: llama.cpp is built by `bash scripts/setup.sh` (or set R4EC_LLAMA_CPP)")
    return path


def engine_identity() -> str:
    """`llama.cpp@<sdist sha256>+<flags hash>`: the source it was built from and how, from BUILD.json. Not the CPU
    it was built for (BUILD.json's key has it, to rebuild on another): a study runs on whichever machine it gets, and
    llama.cpp's answers already vary in the last bits with how requests share a batch, so the same source and flags
    built for two CPUs are one engine to every label, cache key and manifest."""
    binary("llama-server")
    info = json.loads((install_dir() / "BUILD.json").read_text())
    flags = fingerprint.of_json(info["cmake_flags"]).removeprefix("sha256:")[:8]
    return f"llama.cpp@sha256:{info['sdist_sha256'][:16]}+{flags}"


def quantized(source: Path, quantization: str, models_dir: Path) -> Path:
    """`source` re-quantized to `quantization` once (llama-quantize), named by the source's content hash."""
    if quantization == "as-is":
        return source
    digest = fingerprint.of_file(source).removeprefix("sha256:")[:12]
    target = models_dir / f"{source.stem}.{digest}.{quantization}.gguf"
    if target.is_file():
        return target
    log.info("re-quantizing %s to %s (once): %s", source.name, quantization, target)
    with written_atomically(target) as partial:
        command = [str(binary("llama-quantize")), "--allow-requantize", str(source), str(partial), quantization]
        done = subprocess.run(command, capture_output=True, text=True)
        if done.returncode != 0:
            raise BackendError(f"llama-quantize {source.name} -> {quantization} failed: {done.stderr.strip()[-300:]}")
    return target


def free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return probe.getsockname()[1]


def _prctl():
    if not sys.platform.startswith("linux"):
        return None
    try:
        return ctypes.CDLL(None, use_errno=True).prctl  # resolved here: the child may not import or load anything
    except (OSError, AttributeError):
        return None


_PRCTL = _prctl()
PR_SET_PDEATHSIG = 1


def _stop_with_parent() -> None:
    """Runs in the server's process between fork and exec: SIGTERM it when the thread that started it ends (the
    driver's main thread, where `serving_engines` runs)."""
    _PRCTL(PR_SET_PDEATHSIG, signal.SIGTERM)


class LlamaServer:
    """One `llama-server` process on a free loopback port, from `start()` to `stop()` (or a `with` block).

    Each slot keeps its own KV cache: a unified one makes every sequence attend over all slots' cells (masked), and
    at 16 slots of 400-token prompts it ran 2.8x slower on prompts and 6.5x on decoding (llama-batched-bench).

    Its output goes to `log_path`; when it dies before it is ready, the error names the file and quotes its tail."""

    def __init__(
        self, model: Path, log_path: Path, slots: int = 16, context_per_slot: int = 2048, threads: int | None = None,
        cache_ram_mib: int = 2048, ready_timeout_s: float = 120.0, loras: tuple[Path, ...] = (),
    ) -> None:  # fmt: skip
        self.model, self.log_path, self.slots = model, log_path, slots
        self.port = free_port()
        threads = threads or os.cpu_count() or 1
        self.command = [
            str(binary("llama-server")), "--model", str(model), "--host", "127.0.0.1", "--port", str(self.port),
            "--parallel", str(slots), "--ctx-size", str(slots * context_per_slot), "--no-kv-unified", "--flash-attn", "on",
            "--threads", str(threads), "--threads-batch", str(threads), "--cache-ram", str(cache_ram_mib),
            "--no-webui", "--metrics",
        ]  # fmt: skip
        for lora in loras:  # loaded at scale 0: a request names the one it wants (LlamaCppBackend)
            self.command += ["--lora", str(lora)]
        if loras:
            self.command.append("--lora-init-without-apply")
        self.ready_timeout_s = ready_timeout_s
        self.process: subprocess.Popen | None = None

    @property
    def base_url(self) -> str:
        return f"http://127.0.0.1:{self.port}/v1"

    def start(self) -> LlamaServer:
        import httpx

        self.log_path.parent.mkdir(parents=True, exist_ok=True)
        with self.log_path.open("ab") as out:
            self.process = subprocess.Popen(self.command, stdout=out, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL,
                                            preexec_fn=_stop_with_parent if _PRCTL else None)  # fmt: skip
        log.info("llama-server: %s on port %d, %d slots (log: %s)", self.model.name, self.port, self.slots, self.log_path)
        deadline = time.monotonic() + self.ready_timeout_s
        while time.monotonic() < deadline:
            if self.process.poll() is not None:
                raise BackendError(f"llama-server exited with {self.process.returncode} while loading: {self._tail()}")
            try:
                if httpx.get(f"http://127.0.0.1:{self.port}/health", timeout=2).status_code == 200:
                    return self
            except httpx.TransportError:
                pass
            time.sleep(0.2)
        self.stop()
        raise BackendError(f"llama-server was not ready after {self.ready_timeout_s:.0f}s: {self._tail()}")

    def stop(self) -> None:
        """Stop the server; if the process that started it dies without getting here (killed, even with SIGKILL),
        Linux stops the server anyway (`_stop_with_parent`): a killed job must not leave an engine on the cores."""
        if self.process is not None and self.process.poll() is None:
            self.process.terminate()
            try:
                self.process.wait(timeout=10)
            except subprocess.TimeoutExpired:
                self.process.kill()
                self.process.wait()

    def _tail(self) -> str:
        lines = self.log_path.read_text(errors="replace").strip().splitlines()
        return f"{' | '.join(lines[-3:])} (log: {self.log_path})"

    def __enter__(self) -> LlamaServer:
        return self.start()

    def __exit__(self, *exc) -> None:
        self.stop()


def model_file(model: str, quantization: str, models_dir: Path) -> Path:
    """The GGUF to serve for a configured model name: a shipped model (re-quantized where `auto` says so), or a
    local .gguf file."""
    from r4ec.local_models import local_gguf

    return quantized(local_gguf(model, models_dir), served_quantization(model, quantization), models_dir)


def served_quantization(model: str, quantization: str) -> str:
    from r4ec.local_models import SMOLLM2

    if quantization != "auto":
        return quantization
    return "F16" if model == SMOLLM2 else "as-is"


def model_identity(model: str, quantization: str) -> str:
    """What the answers of a served model depend on: the engine build, the source file's content, the type served."""
    from r4ec.local_models import model_identity as file_identity

    return f"{engine_identity()}:{file_identity(model)}:{served_quantization(model, quantization)}"


def serving(settings, log_dir: Path):
    """Start a server for the actor's model and, where another is configured, one for the reflector's; returns a
    context manager yielding {"actor": {...}, "reflector": {...}}: each the url and identity its workers use. LoRA
    adapters (the tuned actor and reflector) are served by the one server, chosen per request."""
    import contextlib

    k = settings.knowledge
    models = {"actor": k.model, "reflector": k.reflector_model or k.model}
    adapters = {role: path for role, path in (("actor", k.actor_adapter), ("reflector", k.reflector_adapter)) if path}
    if adapters and models["reflector"] != models["actor"]:
        raise BackendError("LoRA adapters are tuned on one base model: drop --reflector-model to serve them")
    # two servers busy at once (entities are pipelined) share the cores: ggml's threads spin while they wait, and
    # two servers with a thread per core each decoded Qwen at 0.4 tokens/s per sequence
    threads = max(1, (os.cpu_count() or 1) // len(set(models.values())))

    @contextlib.contextmanager
    def servers():
        with contextlib.ExitStack() as stack:
            engines = {}
            for role, model in models.items():
                if role == "reflector" and model == k.model:
                    engines[role] = engines["actor"]
                    continue
                path = model_file(model, k.quantization, settings.models_dir)
                loras = {name: adapter_gguf(folder, path, settings.models_dir / "adapters") for name, folder in adapters.items()}
                server = stack.enter_context(
                    LlamaServer(path, log_dir / f"llama-server-{role}.log", k.slots, k.context_per_slot, threads,
                                loras=tuple(loras.values()))
                )  # fmt: skip
                engines[role] = {"url": server.base_url, "model": path.name, "slots": k.slots, "context": k.context_per_slot,
                                 "identity": model_identity(model, k.quantization), "adapter_identities": adapter_ids(adapters),
                                 "adapters": {name: n for n, name in enumerate(loras)}}  # fmt: skip
            yield engines

    return servers()
