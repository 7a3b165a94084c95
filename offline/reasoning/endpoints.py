"""Teacher generation over many OpenAI-compatible servers (vLLM, SGLang, `scoter llm serve`, ...): each endpoint
has its own concurrency limit; a request goes to the endpoint with the most free slots; a retryable failure
(429/5xx, timeout, refused connection) moves it to another endpoint at once, with backoff only once every
endpoint has failed it; an endpoint failing `failure_threshold` times in a row rests for `cooldown_s` before it
gets a request again. The resumable response cache of the single-endpoint client is shared, so a killed run
sends only the prompts it had not finished.

`build_llm("http://a:8000/v1@16,http://b:8000/v1@8#model")` builds one (`@N`: that endpoint's concurrency)."""

from __future__ import annotations

import asyncio
import logging
import random
import time
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import httpx
from pydantic import BaseModel, ConfigDict, Field

from offline.reasoning.config import SamplingParams
from offline.reasoning.http_backend import RETRY_STATUS, LLMRequestError, parse_completion, request_body
from offline.reasoning.llm import Chat, ResponseCache, cache_key, run_sync, validate_chats

log = logging.getLogger(__name__)


class EndpointConfig(BaseModel):
    model_config = ConfigDict(extra="forbid")

    base_url: str = Field(..., pattern=r"^https?://", description="ends with /v1")
    concurrency: int = Field(8, ge=1, description="requests in flight at once on this endpoint")
    api_key: str | None = None


class EndpointsConfig(BaseModel):
    """Many endpoints serving the same model."""

    model_config = ConfigDict(extra="forbid")

    endpoints: list[EndpointConfig] = Field(..., min_length=1)
    model: str = "smollm2-135m-instruct"
    timeout_s: float = Field(120.0, gt=0)
    max_retries: int = Field(5, ge=0, description="extra attempts per prompt, over all endpoints")
    backoff_s: float = Field(0.5, ge=0, description="delay once every endpoint failed a prompt; doubles")
    max_backoff_s: float = Field(30.0, ge=0)
    failure_threshold: int = Field(3, ge=1, description="failures in a row that rest an endpoint")
    cooldown_s: float = Field(30.0, ge=0, description="how long a failing endpoint rests")
    cache_path: Path | None = Field(None, description="JSONL response cache; None = no cache")

    @classmethod
    def parse(cls, spec: str, **overrides: Any) -> EndpointsConfig:
        """'URL[@N],URL[@N],...[#model]'."""
        urls, _, model = spec.partition("#")
        endpoints = []
        for part in filter(None, (p.strip() for p in urls.split(","))):
            url, _, n = part.rpartition("@") if "@" in part.rsplit("/", 1)[-1] else (part, "", "")
            try:
                conc = {"concurrency": int(n)} if n else {}
            except ValueError:
                raise ValueError(f"--llm: {part!r}: concurrency after '@' must be an integer") from None
            endpoints.append(EndpointConfig(base_url=url.rstrip("/"), **conc))
        return cls(endpoints=endpoints, **({"model": model} if model else {}), **overrides)


@dataclass
class _Endpoint:
    """One endpoint's health (kept across calls) and, during a call, its slots and connection pool."""

    config: EndpointConfig
    sem: asyncio.Semaphore | None = None
    client: httpx.AsyncClient | None = None
    in_flight: int = 0
    failures_in_a_row: int = 0
    resting_until: float = 0.0
    stats: dict[str, int] = field(default_factory=lambda: {"requests": 0, "ok": 0, "failed": 0})

    def load(self) -> float:
        return self.in_flight / self.config.concurrency


class MultiEndpointLLM:
    """The LLM interface over many endpoints. State per endpoint (requests, failures) accumulates over calls."""

    def __init__(self, config: EndpointsConfig, transport: httpx.AsyncBaseTransport | None = None) -> None:
        self.config = config
        self.name = config.model
        self.cache = ResponseCache(config.cache_path) if config.cache_path else None
        self._transport = transport
        self.cache_hits = 0
        self.failovers = 0
        self.endpoints = [_Endpoint(e) for e in config.endpoints]

    @property
    def stats(self) -> dict[str, dict[str, int]]:
        """Requests, successes and failures per endpoint URL."""
        return {e.config.base_url: dict(e.stats) for e in self.endpoints}

    def generate(self, prompts: Sequence[Chat], params: SamplingParams) -> list[str]:
        return run_sync(self.agenerate(prompts, params))

    async def agenerate(self, prompts: Sequence[Chat], params: SamplingParams) -> list[str]:
        validate_chats(prompts)
        timeout = httpx.Timeout(self.config.timeout_s)
        eps = self.endpoints
        for ep in eps:  # loop-bound objects are made per call; health carries over
            e = ep.config
            ep.sem, ep.in_flight = asyncio.Semaphore(e.concurrency), 0
            ep.client = httpx.AsyncClient(base_url=e.base_url, timeout=timeout, transport=self._transport,
                                          headers={"Authorization": f"Bearer {e.api_key}"} if e.api_key else {})
        try:
            return list(await asyncio.gather(*(self._one(eps, c, params) for c in prompts)))
        finally:
            for ep in eps:
                await ep.client.aclose()
                ep.sem = ep.client = None

    def _pick(self, eps: list[_Endpoint], tried: set[int]) -> int:
        """The least loaded endpoint that is not resting, preferring ones this prompt has not failed on; when
        every endpoint rests, the one that wakes first."""
        now = time.monotonic()
        awake = [i for i, e in enumerate(eps) if e.resting_until <= now]
        fresh = [i for i in awake if i not in tried] or awake
        if not fresh:
            return min(range(len(eps)), key=lambda i: eps[i].resting_until)
        return min(fresh, key=lambda i: (eps[i].load(), i))

    async def _one(self, eps: list[_Endpoint], chat: Chat, params: SamplingParams) -> str:
        key = cache_key(self.name, chat, params)
        if self.cache is not None and (hit := self.cache.get(key)) is not None:
            self.cache_hits += 1
            return hit
        body = request_body(self.name, chat, params)
        delay, why = self.config.backoff_s, ""
        tried: set[int] = set()  # endpoints that failed this prompt in this round
        attempt = 0
        while True:
            i = self._pick(eps, tried)
            ep = eps[i]
            assert ep.sem is not None and ep.client is not None
            ep.in_flight += 1  # assigned: waiting for a slot or in flight (what `_pick` balances)
            try:
                async with ep.sem:
                    if ep.resting_until > time.monotonic() and any(e.resting_until <= time.monotonic() for e in eps):
                        continue  # it started resting while this prompt waited for its slot: go elsewhere
                    ep.stats["requests"] += 1
                    try:
                        resp = await ep.client.post("/chat/completions", json=body)
                        if resp.status_code not in RETRY_STATUS:
                            if resp.status_code >= 400:  # the prompt's fault, not the endpoint's: no failover
                                raise LLMRequestError(f"POST {ep.config.base_url}/chat/completions -> "
                                                      f"{resp.status_code}: {resp.text[:300]}")
                            text = parse_completion(resp.json())
                            ep.failures_in_a_row = 0
                            ep.stats["ok"] += 1
                            if self.cache is not None:
                                self.cache.put(key, text)
                            return text
                        why = f"HTTP {resp.status_code}"
                    except (httpx.TimeoutException, httpx.TransportError) as exc:
                        why = type(exc).__name__
            finally:
                ep.in_flight -= 1
            self._failed(ep, why)
            tried.add(i)
            if attempt == self.config.max_retries:
                break
            attempt += 1
            now = time.monotonic()
            if all(j in tried or e.resting_until > now for j, e in enumerate(eps)):
                # every endpoint failed this prompt or rests: back off before the next round
                wait = min(delay, self.config.max_backoff_s) * (1 + 0.25 * random.random())
                await asyncio.sleep(wait)
                delay *= 2
                tried.clear()
            else:
                self.failovers += 1
        raise LLMRequestError(f"giving up after {self.config.max_retries + 1} attempts over "
                              f"{len(eps)} endpoints: {why}")

    def _failed(self, ep: _Endpoint, why: str) -> None:
        ep.stats["failed"] += 1
        ep.failures_in_a_row += 1
        if ep.failures_in_a_row >= self.config.failure_threshold and ep.resting_until <= time.monotonic():
            ep.resting_until = time.monotonic() + self.config.cooldown_s
            log.warning("endpoint %s failed %d times in a row (%s): resting %.0fs", ep.config.base_url,
                        ep.failures_in_a_row, why, self.config.cooldown_s)
        else:
            log.info("endpoint %s: %s; trying another", ep.config.base_url, why)
