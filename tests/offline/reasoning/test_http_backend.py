"""The OpenAI-compatible client over real HTTP: against `scoter llm serve` running the real 135M model, and
against small real FastAPI servers that fail on purpose (503 first, slow first, 400) to test retries,
timeouts and the resumable cache."""

from __future__ import annotations

import asyncio
import threading

import pytest
from fastapi import FastAPI
from fastapi.responses import JSONResponse

from offline.reasoning.config import HttpLLMConfig, SamplingParams
from offline.reasoning.http_backend import HttpLLM, LLMRequestError
from offline.reasoning.llm import ResponseCache, cache_key
from offline.reasoning.server import create_app

from .conftest import serve

GREEDY = SamplingParams(temperature=0.0, top_p=1.0, max_tokens=8)
CHAT = [{"role": "user", "content": "Name one nail polish colour."}]


def _reply(text: str) -> dict:
    return {"choices": [{"index": 0, "message": {"role": "assistant", "content": text}}]}


class Flaky:
    """A server that fails the first `fail` requests with `status` (or sleeps `delay` s), then answers."""

    def __init__(self, fail: int = 0, status: int = 503, delay: float = 0.0) -> None:
        self.fail, self.status, self.delay = fail, status, delay
        self.calls = 0
        self.lock = threading.Lock()
        self.app = FastAPI()

        @self.app.post("/v1/chat/completions")
        async def chat(body: dict) -> JSONResponse:
            with self.lock:
                self.calls += 1
                n = self.calls
            if n <= self.fail:
                if self.delay:
                    await asyncio.sleep(self.delay)
                else:
                    return JSONResponse({"error": "busy"}, status_code=self.status)
            return JSONResponse(_reply("echo:" + body["messages"][-1]["content"]))


def test_client_against_local_model_server(local_llm) -> None:
    direct = local_llm.generate([CHAT], GREEDY)[0]
    with serve(create_app(local_llm)) as url:
        client = HttpLLM(HttpLLMConfig(base_url=url, timeout_s=120))
        texts = client.generate([CHAT], GREEDY)
        assert texts == [direct] and direct.strip()
        # concurrent prompts are all answered, in order
        many = client.generate([[{"role": "user", "content": f"Say {w}."}] for w in ("red", "blue", "green")],
                               GREEDY.model_copy(update={"max_tokens": 4}))
        assert len(many) == 3 and all(isinstance(t, str) for t in many)


def test_retries_on_503_then_succeeds() -> None:
    srv = Flaky(fail=2, status=503)
    with serve(srv.app) as url:
        client = HttpLLM(HttpLLMConfig(base_url=url, backoff_s=0.01, max_retries=3))
        assert client.generate([CHAT], GREEDY) == ["echo:" + CHAT[0]["content"]]
    assert srv.calls == 3 and client.retries == 2


def test_gives_up_after_max_retries_and_does_not_retry_400() -> None:
    srv = Flaky(fail=10, status=503)
    with serve(srv.app) as url:
        with pytest.raises(LLMRequestError, match="giving up after 3 attempts: HTTP 503"):
            HttpLLM(HttpLLMConfig(base_url=url, backoff_s=0.01, max_retries=2)).generate([CHAT], GREEDY)
    bad = Flaky(fail=10, status=400)
    with serve(bad.app) as url:
        with pytest.raises(LLMRequestError, match="400"):
            HttpLLM(HttpLLMConfig(base_url=url, backoff_s=0.01, max_retries=3)).generate([CHAT], GREEDY)
    assert bad.calls == 1


def test_timeout_is_retried() -> None:
    srv = Flaky(fail=1, delay=2.0)
    with serve(srv.app) as url:
        client = HttpLLM(HttpLLMConfig(base_url=url, timeout_s=0.3, backoff_s=0.01, max_retries=2))
        assert client.generate([CHAT], GREEDY)[0].startswith("echo:")
    assert client.retries == 1


def test_cache_resumes_a_killed_job(tmp_path) -> None:
    cache = tmp_path / "responses.jsonl"
    prompts = [[{"role": "user", "content": f"q{i}"}] for i in range(4)]
    srv = Flaky()
    with serve(srv.app) as url:
        first = HttpLLM(HttpLLMConfig(base_url=url, cache_path=cache)).generate(prompts[:2], GREEDY)
        assert srv.calls == 2
        with open(cache, "ab") as f:  # a job killed mid-write leaves a torn line
            f.write(b'{"key": "abc", "te')
        resumed = HttpLLM(HttpLLMConfig(base_url=url, cache_path=cache))
        assert resumed.cache.torn_lines == 1
        out = resumed.generate(prompts, GREEDY)
        assert out[:2] == first and srv.calls == 4 and resumed.cache_hits == 2
        # a changed sampling parameter is a different key
        assert cache_key("m", prompts[0], GREEDY) != cache_key("m", prompts[0], GREEDY.model_copy(update={"seed": 1}))
    reloaded = ResponseCache(cache)
    assert len(reloaded) == 4 and reloaded.torn_lines == 1


def test_bad_prompt_names_the_field() -> None:
    client = HttpLLM(HttpLLMConfig(base_url="http://127.0.0.1:9/v1"))
    with pytest.raises(ValueError, match=r"prompts\[0\]\[0\]\.role"):
        client.generate([[{"role": "robot", "content": "x"}]], GREEDY)


def test_cli_registers_llm_serve_and_llm_spec_errors() -> None:
    from offline.reasoning.llm import build_llm
    from scoter.cli import build_parser

    args = build_parser().parse_args(["llm", "serve", "--port", "8123"])
    assert args.port == 8123 and args.llm == "local" and callable(args.func)
    assert isinstance(build_llm("http://127.0.0.1:9/v1#my-model"), HttpLLM)
    with pytest.raises(ValueError, match="--llm"):
        build_llm("ftp://nowhere")
