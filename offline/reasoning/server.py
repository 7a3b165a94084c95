"""`scoter llm serve`: a small OpenAI-compatible /v1/chat/completions server over the in-process backend,
so the HTTP client (and anything else that speaks the OpenAI API) can use the embedded model."""

from __future__ import annotations

import asyncio
import time
import uuid
from typing import Literal

from fastapi import FastAPI
from pydantic import BaseModel, Field

from offline.reasoning.config import SamplingParams
from offline.reasoning.llm import LLM


class ChatMessage(BaseModel):
    role: Literal["system", "user", "assistant"]
    content: str


class ChatRequest(BaseModel):
    model: str | None = None
    messages: list[ChatMessage] = Field(..., min_length=1)
    temperature: float = Field(1.0, ge=0.0, le=2.0)
    top_p: float = Field(1.0, gt=0.0, le=1.0)
    max_tokens: int = Field(256, ge=1, le=8192)
    seed: int | None = None
    stop: str | list[str] | None = None
    continue_final_message: bool = False
    add_generation_prompt: bool = True
    guided_grammar: str | None = Field(None, description="EBNF the answer must match (vLLM's name)")
    repetition_penalty: float = Field(1.0, ge=1.0, le=3.0)
    line_max_tokens: int | None = Field(None, ge=1, description="extension: token cap per output line")


class BatchingQueue:
    """Collects concurrent requests with identical sampling params into one batched generate() call."""

    def __init__(self, llm: LLM, max_batch: int = 8, wait_s: float = 0.01) -> None:
        self.llm, self.max_batch, self.wait_s = llm, max_batch, wait_s
        self._pending: dict[SamplingParams, list[tuple[list[dict[str, str]], asyncio.Future[str]]]] = {}
        self._lock = asyncio.Lock()

    async def submit(self, chat: list[dict[str, str]], params: SamplingParams) -> str:
        fut: asyncio.Future[str] = asyncio.get_running_loop().create_future()
        self._pending.setdefault(params, []).append((chat, fut))
        if len(self._pending[params]) == 1:
            asyncio.get_running_loop().call_later(self.wait_s, lambda: asyncio.ensure_future(self._flush(params)))
        return await fut

    async def _flush(self, params: SamplingParams) -> None:
        async with self._lock:  # one batch on the model at a time
            while batch := self._pending.pop(params, []):
                head, rest = batch[: self.max_batch], batch[self.max_batch:]
                if rest:
                    self._pending[params] = rest
                try:
                    texts = await self.llm.agenerate([c for c, _ in head], params)
                except Exception as exc:  # noqa: BLE001 - every waiter must hear about the failure
                    for _, f in head:
                        f.set_exception(exc)
                    continue
                for (_, f), t in zip(head, texts, strict=True):
                    f.set_result(t)


def create_app(llm: LLM, *, max_batch: int = 8) -> FastAPI:
    app = FastAPI(title="scoter llm", description=__doc__)
    queue = BatchingQueue(llm, max_batch=max_batch)

    @app.get("/v1/models")
    async def models() -> dict:
        return {"object": "list", "data": [{"id": llm.name, "object": "model", "owned_by": "scoter"}]}

    @app.get("/healthz")
    async def healthz() -> dict:
        return {"status": "ok"}

    @app.post("/v1/chat/completions")
    async def chat(req: ChatRequest) -> dict:
        msgs = [m.model_dump() for m in req.messages]
        if not req.continue_final_message and msgs[-1]["role"] == "assistant":
            msgs.append({"role": "user", "content": ""})  # plain OpenAI semantics: answer, do not continue
        stop = (req.stop,) if isinstance(req.stop, str) else tuple(req.stop or ())
        params = SamplingParams(temperature=req.temperature, top_p=req.top_p, max_tokens=req.max_tokens,
                                seed=req.seed, stop=stop, grammar=req.guided_grammar,
                                repetition_penalty=req.repetition_penalty, line_max_tokens=req.line_max_tokens)
        text = await queue.submit(msgs, params)
        return {
            "id": f"chatcmpl-{uuid.uuid4().hex}", "object": "chat.completion", "created": int(time.time()),
            "model": llm.name,
            "choices": [{"index": 0, "message": {"role": "assistant", "content": text}, "finish_reason": "stop"}],
        }

    return app
