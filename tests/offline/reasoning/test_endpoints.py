"""Teacher generation over many endpoints, over real HTTP: small real OpenAI-compatible FastAPI servers (they
answer at once, fail on purpose, or count requests in flight; the real 135M model would take minutes for these
prompt counts), one `scoter llm serve` app over the real local model, a refused port, and a client process killed
with SIGKILL mid-run that a second run resumes from the response cache."""

from __future__ import annotations

import asyncio
import os
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path

import pytest
from fastapi import FastAPI
from fastapi.responses import JSONResponse

from offline.reasoning.config import SamplingParams
from offline.reasoning.endpoints import EndpointConfig, EndpointsConfig, MultiEndpointLLM
from offline.reasoning.http_backend import LLMRequestError
from offline.reasoning.llm import build_llm
from offline.reasoning.server import create_app
from scoter.testing import free_port

from .conftest import serve

GREEDY = SamplingParams(temperature=0.0, top_p=1.0, max_tokens=8)
REPO = Path(__file__).resolve().parents[3]


def chats(n: int, tag: str = "p") -> list[list[dict[str, str]]]:
    return [[{"role": "user", "content": f"{tag}{i}"}] for i in range(n)]


class Server:
    """Answers 'echo:<prompt>' after `delay` s; `status` != 200 fails every request; records peak in-flight."""

    def __init__(self, delay: float = 0.0, status: int = 200) -> None:
        self.delay, self.status = delay, status
        self.calls = self.in_flight = self.peak = 0
        self.lock = threading.Lock()
        self.app = FastAPI()

        @self.app.post("/v1/chat/completions")
        async def chat(body: dict) -> JSONResponse:
            with self.lock:
                self.calls += 1
                self.in_flight += 1
                self.peak = max(self.peak, self.in_flight)
            try:
                await asyncio.sleep(self.delay)
                if self.status != 200:
                    return JSONResponse({"error": "no"}, status_code=self.status)
                text = "echo:" + body["messages"][-1]["content"]
                return JSONResponse({"choices": [{"index": 0, "message": {"role": "assistant", "content": text}}]})
            finally:
                with self.lock:
                    self.in_flight -= 1


def llm(urls_conc: list[tuple[str, int]], **kw) -> MultiEndpointLLM:
    kw = {"backoff_s": 0.01, "max_backoff_s": 0.05, **kw}
    return MultiEndpointLLM(EndpointsConfig(endpoints=[EndpointConfig(base_url=u, concurrency=c)
                                                       for u, c in urls_conc], **kw))


def test_spreads_load_within_each_endpoints_concurrency() -> None:
    a, b = Server(delay=0.05), Server(delay=0.05)
    with serve(a.app) as ua, serve(b.app) as ub:
        client = llm([(ua, 2), (ub, 4)])
        out = client.generate(chats(30), GREEDY)
    assert out == [f"echo:p{i}" for i in range(30)]  # every prompt answered, in order
    assert a.calls + b.calls == 30 and a.calls >= 5 and b.calls >= 10  # both worked, b (more slots) more
    assert a.peak <= 2 and b.peak <= 4 and b.peak == 4  # never above an endpoint's own limit


def test_fails_over_from_a_failing_and_a_dead_endpoint_and_rests_them() -> None:
    bad, good = Server(status=503), Server()
    with serve(bad.app) as ubad, serve(good.app) as ugood:
        dead = f"http://127.0.0.1:{free_port()}/v1"  # nothing listens there: connection refused
        client = llm([(ubad, 2), (dead, 2), (ugood, 2)], failure_threshold=2, cooldown_s=60)
        out = client.generate(chats(20), GREEDY)
        assert out == [f"echo:p{i}" for i in range(20)]
        assert good.calls == 20 and client.failovers >= 2
        first_bad = bad.calls
        assert 1 <= first_bad <= 4  # rested once it failed twice in a row (the first wave was in flight)
        stats = client.stats
        assert stats[dead]["failed"] >= 1 and stats[dead]["ok"] == 0
        # resting endpoints get nothing on the next call
        assert client.generate(chats(10, "q"), GREEDY) == [f"echo:q{i}" for i in range(10)]
        assert bad.calls == first_bad and good.calls == 30


def test_gives_up_when_every_endpoint_fails_and_a_400_is_not_retried() -> None:
    a, b = Server(status=503), Server(status=400)
    with serve(a.app) as ua:
        client = llm([(ua, 1), (f"http://127.0.0.1:{free_port()}/v1", 1)], max_retries=3)
        with pytest.raises(LLMRequestError, match="giving up after 4 attempts over 2 endpoints"):
            client.generate(chats(1), GREEDY)
    with serve(b.app) as ub, serve(Server().app) as uok:
        client = llm([(ub, 1), (uok, 1)])
        with pytest.raises(LLMRequestError, match="400"):
            client.generate(chats(1), GREEDY)  # the least loaded is the first: it answers 400
        assert b.calls == 1 and client.failovers == 0


def test_through_llm_serve_over_the_real_model(local_llm) -> None:
    # The server batches what is queued, so the two requests run together or apart; float32 matmuls of another
    # batch shape round differently and can flip a near-tie greedy token, so each answer must be the model's own
    # under one of the two batchings.
    together = local_llm.generate(chats(2), GREEDY)
    apart = [local_llm.generate([c], GREEDY)[0] for c in chats(2)]
    with serve(create_app(local_llm)) as url:
        dead = f"http://127.0.0.1:{free_port()}/v1"
        client = build_llm(f"{dead}@1,{url}@2")
        assert isinstance(client, MultiEndpointLLM)
        got = client.generate(chats(2), GREEDY)
        assert all(g in (t, a) and g for g, t, a in zip(got, together, apart, strict=True))
        assert client.stats[url]["ok"] == 2


def test_spec_parsing() -> None:
    cfg = EndpointsConfig.parse("http://a:1/v1@4, http://b:2/v1#my-model")
    assert [(e.base_url, e.concurrency) for e in cfg.endpoints] == [("http://a:1/v1", 4), ("http://b:2/v1", 8)]
    assert cfg.model == "my-model"
    with pytest.raises(ValueError, match="integer"):
        EndpointsConfig.parse("http://a:1/v1@x,http://b/v1")


KILLED_RUN = """
import sys
from pathlib import Path
from offline.reasoning.config import SamplingParams
from offline.reasoning.endpoints import EndpointConfig, EndpointsConfig, MultiEndpointLLM
urls, cache = sys.argv[1].split(","), Path(sys.argv[2])
llm = MultiEndpointLLM(EndpointsConfig(endpoints=[EndpointConfig(base_url=u, concurrency=1) for u in urls],
                                       cache_path=cache))
llm.generate([[{"role": "user", "content": f"p{i}"}] for i in range(40)],
             SamplingParams(temperature=0.0, top_p=1.0, max_tokens=8))
"""


def test_a_killed_run_resumes_from_the_cache(tmp_path: Path) -> None:
    a, b = Server(delay=0.1), Server(delay=0.1)
    cache = tmp_path / "cache.jsonl"
    with serve(a.app) as ua, serve(b.app) as ub:
        proc = subprocess.Popen([sys.executable, "-c", KILLED_RUN, f"{ua},{ub}", str(cache)], cwd=REPO,
                                env={**os.environ, "OMP_NUM_THREADS": "1"})
        deadline = time.time() + 120
        while not cache.exists() or len(cache.read_text().splitlines()) < 6:
            assert proc.poll() is None and time.time() < deadline, "the run ended before it could be killed"
            time.sleep(0.05)
        os.kill(proc.pid, signal.SIGKILL)
        proc.wait(10)
        done = len([line for line in cache.read_text().splitlines() if line.strip()])
        assert 6 <= done < 40
        sent_before = a.calls + b.calls
        client = MultiEndpointLLM(EndpointsConfig(endpoints=[EndpointConfig(base_url=ua), EndpointConfig(
            base_url=ub)], cache_path=cache))
        out = client.generate(chats(40), GREEDY)
    assert out == [f"echo:p{i}" for i in range(40)]
    assert client.cache_hits >= done
    assert (a.calls + b.calls) - sent_before == 40 - client.cache_hits  # only the unfinished prompts were sent
