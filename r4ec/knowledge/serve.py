"""A small OpenAI-compatible chat server over the transformers backend: `r4ec knowledge serve`.

For development and tests where `vllm serve` cannot run (no GPU): the `openai` backend talks to it over real HTTP.
It accepts vLLM's `continue_final_message` (a prefilled reply) and `stop`, and serves one request at a time.
"""

from __future__ import annotations

import threading
import time
import uuid

from r4ec.knowledge.backends import GenerationConfig, Request, TransformersBackend


def create_app(backend: TransformersBackend, served_name: str):
    from fastapi import Body, FastAPI, HTTPException

    app = FastAPI(title="r4ec OpenAI-compatible chat server")
    lock = threading.Lock()  # one generate at a time: the model is not thread-safe

    @app.get("/v1/models")
    def models() -> dict:
        return {"object": "list", "data": [{"id": served_name, "object": "model"}]}

    @app.post("/v1/chat/completions")
    def chat(body: dict = Body(...)) -> dict:  # noqa: B008 (FastAPI's way to take a JSON body)
        if body.get("model") != served_name:
            raise HTTPException(404, f"model {body.get('model')!r} is not served (only {served_name!r})")
        messages = list(body["messages"])
        prefix = ""
        if body.get("continue_final_message") and messages and messages[-1]["role"] == "assistant":
            prefix = messages.pop()["content"]
        stop = body.get("stop") or ()
        config = GenerationConfig(
            max_new_tokens=int(body.get("max_tokens") or 256), temperature=float(body.get("temperature") or 0.0),
            top_p=float(body.get("top_p") or 1.0), seed=int(body.get("seed") or 0), prefix=prefix,
            stop=(stop,) if isinstance(stop, str) else tuple(stop),
        )  # fmt: skip
        with lock:
            (generation,) = backend.generate([Request.chat(messages)], config)
        content = generation.text[len(prefix) :] if prefix and generation.text.startswith(prefix) else generation.text
        for s in config.stop:  # OpenAI semantics: the stop string is not part of the content
            content = content.split(s)[0]
        return {
            "id": f"chatcmpl-{uuid.uuid4().hex}",
            "object": "chat.completion",
            "created": int(time.time()),
            "model": served_name,
            "choices": [{"index": 0, "message": {"role": "assistant", "content": content}, "finish_reason": "stop"}],
            "usage": {"prompt_tokens": generation.tokens_in, "completion_tokens": generation.tokens_out,
                      "total_tokens": generation.tokens_in + generation.tokens_out},  # fmt: skip
        }

    return app
