"""OpenAI-compatible /v1/chat/completions client: bounded concurrency, timeouts, retries with exponential
backoff on 429/5xx/timeouts, and a resumable on-disk response cache (a killed job resumes where it stopped)."""

from __future__ import annotations

import asyncio
import logging
import random
from collections.abc import Sequence
from typing import Any

import httpx

from offline.reasoning.config import HttpLLMConfig, SamplingParams
from offline.reasoning.llm import (
    Chat,
    ResponseCache,
    cache_key,
    continues_assistant,
    run_sync,
    validate_chats,
)

log = logging.getLogger(__name__)
RETRY_STATUS = {408, 409, 425, 429, 500, 502, 503, 504}


class LLMRequestError(RuntimeError):
    """A request that failed for good (non-retryable status, or retries exhausted)."""


def request_body(model: str, chat: Chat, params: SamplingParams) -> dict[str, Any]:
    body: dict[str, Any] = {
        "model": model, "messages": chat, "temperature": params.temperature, "top_p": params.top_p,
        "max_tokens": params.max_tokens,
    }
    if params.seed is not None:
        body["seed"] = params.seed
    if params.stop:
        body["stop"] = list(params.stop)
    if params.grammar:  # vLLM's and `scoter llm serve`'s name for an EBNF constraint
        body["guided_grammar"] = params.grammar
    if params.repetition_penalty != 1.0:
        body["repetition_penalty"] = params.repetition_penalty
    if params.line_max_tokens:
        body["line_max_tokens"] = params.line_max_tokens
    if continues_assistant(chat):  # vLLM / SGLang / `scoter llm serve` extension for assistant prefill
        body["continue_final_message"] = True
        body["add_generation_prompt"] = False
    return body


class HttpLLM:
    """LLM over HTTP. One AsyncClient per call of agenerate (no loop-bound state kept between calls)."""

    def __init__(self, config: HttpLLMConfig, transport: httpx.AsyncBaseTransport | None = None) -> None:
        self.config = config
        self.name = config.model
        self.cache = ResponseCache(config.cache_path) if config.cache_path else None
        self._transport = transport
        self.requests_sent = 0
        self.retries = 0
        self.cache_hits = 0

    def generate(self, prompts: Sequence[Chat], params: SamplingParams) -> list[str]:
        return run_sync(self.agenerate(prompts, params))

    async def agenerate(self, prompts: Sequence[Chat], params: SamplingParams) -> list[str]:
        validate_chats(prompts)
        sem = asyncio.Semaphore(self.config.concurrency)
        headers = {"Authorization": f"Bearer {self.config.api_key}"} if self.config.api_key else {}
        async with httpx.AsyncClient(base_url=self.config.base_url, headers=headers, transport=self._transport,
                                     timeout=httpx.Timeout(self.config.timeout_s)) as client:
            return list(await asyncio.gather(*(self._one(client, sem, c, params) for c in prompts)))

    async def _one(self, client: httpx.AsyncClient, sem: asyncio.Semaphore, chat: Chat,
                   params: SamplingParams) -> str:
        key = cache_key(self.name, chat, params)
        if self.cache is not None and (hit := self.cache.get(key)) is not None:
            self.cache_hits += 1
            return hit
        body = request_body(self.name, chat, params)
        delay = self.config.backoff_s
        for attempt in range(self.config.max_retries + 1):
            async with sem:
                try:
                    self.requests_sent += 1
                    resp = await client.post("/chat/completions", json=body)
                    if resp.status_code not in RETRY_STATUS:
                        if resp.status_code >= 400:
                            raise LLMRequestError(f"POST {client.base_url}/chat/completions -> "
                                                  f"{resp.status_code}: {resp.text[:300]}")
                        text = parse_completion(resp.json())
                        if self.cache is not None:
                            self.cache.put(key, text)
                        return text
                    why = f"HTTP {resp.status_code}"
                    retry_after = _retry_after(resp)
                except (httpx.TimeoutException, httpx.TransportError) as exc:
                    why, retry_after = f"{type(exc).__name__}", None
            if attempt == self.config.max_retries:
                raise LLMRequestError(f"giving up after {attempt + 1} attempts: {why}")
            self.retries += 1
            wait = retry_after if retry_after is not None else min(delay, self.config.max_backoff_s)
            wait *= 1 + 0.25 * random.random()  # jitter so retries do not arrive in lock-step
            log.warning("LLM request failed (%s); retry %d in %.2fs", why, attempt + 1, wait)
            await asyncio.sleep(wait)
            delay *= 2
        raise AssertionError("unreachable")


def _retry_after(resp: httpx.Response) -> float | None:
    try:
        return float(resp.headers["retry-after"])
    except (KeyError, ValueError):
        return None


def parse_completion(payload: Any) -> str:
    """choices[0].message.content, with a clear error when the server answers something else."""
    try:
        content = payload["choices"][0]["message"]["content"]
    except (KeyError, IndexError, TypeError) as exc:
        raise LLMRequestError(f"response has no choices[0].message.content: {str(payload)[:300]}") from exc
    return content or ""
