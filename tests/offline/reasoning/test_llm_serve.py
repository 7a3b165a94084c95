"""The OpenAI-compatible path end to end: `scoter llm serve` started as its own process with the real 135M
model, the HTTP client sending grounded and hindsight prompts with the answer grammar; the answers come back
well formed and their candidate numbers map to catalogue items exactly."""

from __future__ import annotations

import os
import subprocess
import sys
import time

import httpx
import numpy as np
import pytest

from offline.reasoning.config import GVMConfig, HttpLLMConfig, SamplingParams
from offline.reasoning.gvm import answer_grammar, recommended_items, variant_examples
from offline.reasoning.http_backend import HttpLLM
from offline.reasoning.parsing import parse_gvm_output

from .conftest import free_port


@pytest.fixture(scope="module")
def served() -> str:
    port = free_port()
    env = {**os.environ, "OMP_NUM_THREADS": "1", "HF_HUB_OFFLINE": "1", "TRANSFORMERS_OFFLINE": "1"}
    proc = subprocess.Popen([sys.executable, "-m", "scoter.cli", "llm", "serve", "--port", str(port)], env=env,
                            stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    url = f"http://127.0.0.1:{port}"
    try:
        deadline = time.time() + 120
        while True:
            if proc.poll() is not None:
                raise RuntimeError(f"scoter llm serve exited: {proc.stderr.read().decode()[-2000:]}")
            try:
                if httpx.get(url + "/healthz", timeout=1).status_code == 200:
                    break
            except httpx.HTTPError:
                pass
            if time.time() > deadline:
                raise RuntimeError("scoter llm serve did not come up")
            time.sleep(0.3)
        yield url + "/v1"
    finally:
        proc.terminate()
        proc.wait(timeout=30)


@pytest.mark.parametrize("variant", ["grounded", "hindsight"])
def test_grounded_and_hindsight_prompts_through_the_server(served, tiny_dataset, variant) -> None:
    cfg = GVMConfig(variant=variant, candidates=4, recall_k=3, reason_chars=24, max_steps=2)
    examples = variant_examples(cfg, tiny_dataset, [0, 1])
    grammar = answer_grammar(cfg).replace("{2,3}", "{1,2}")  # keep the answers short on 2 cores
    params = SamplingParams(temperature=0.7, max_tokens=120, seed=3, grammar=grammar, line_max_tokens=10,
                            repetition_penalty=1.1)
    client = HttpLLM(HttpLLMConfig(base_url=served, timeout_s=300))
    answers = client.generate([ex["chat"] for ex in examples], params)
    for ex, text in zip(examples, answers, strict=True):
        parsed = parse_gvm_output(text)
        assert parsed.error is None, text
        items = recommended_items(parsed.recommendations, ex["candidates"], np.eye(10, dtype=np.float32),
                                  lambda t: np.zeros((len(t), 10), np.float32), k=3)
        assert items and set(items) <= set(ex["candidates"])


def test_server_rejects_a_bad_grammar_field(served) -> None:
    r = httpx.post(served + "/chat/completions", json={"messages": [{"role": "user", "content": "hi"}],
                                                       "repetition_penalty": 9.0}, timeout=30)
    assert r.status_code == 422 and "repetition_penalty" in r.text
