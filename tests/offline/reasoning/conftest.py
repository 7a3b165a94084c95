"""Shared fixtures: real uvicorn servers on free ports, the real local model, a small constructed dataset."""

from __future__ import annotations

import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager

import numpy as np
import pytest
import uvicorn

from offline.data.datasets import Dataset, Item
from scoter.testing import free_port


@contextmanager
def serve(app) -> Iterator[str]:  # noqa: ANN001
    """Run `app` with uvicorn in a thread; yields the base URL (with /v1)."""
    port = free_port()
    server = uvicorn.Server(uvicorn.Config(app, host="127.0.0.1", port=port, log_level="warning", lifespan="off"))
    t = threading.Thread(target=server.run, daemon=True)
    t.start()
    deadline = time.time() + 20
    while not server.started:
        if time.time() > deadline:
            raise RuntimeError("test server did not start")
        time.sleep(0.02)
    try:
        yield f"http://127.0.0.1:{port}/v1"
    finally:
        server.should_exit = True
        t.join(timeout=10)


@pytest.fixture(scope="session")
def local_llm():
    """The real packaged SmolLM2-135M (loads in seconds; every test keeps generations short)."""
    import torch

    from offline.reasoning.config import LocalLLMConfig
    from offline.reasoning.local_backend import LocalLLM

    torch.set_num_threads(1)
    return LocalLLM(LocalLLMConfig(batch_size=4))


@pytest.fixture(scope="session")
def tiny_dataset() -> Dataset:
    """Six users over a small beauty-like catalogue, so tests know every target."""
    titles = ["OPI red nail polish", "OPI top coat", "Nail polish remover", "BB cream for dry skin",
              "Concealer palette", "Hair dryer 1800W", "Argan oil shampoo", "Hair straightener", "Lip balm",
              "Vitamin C face serum"]
    items = [Item(item_id=f"I{i}", title=t, brand="Acme", categories=["Beauty"]) for i, t in enumerate(titles, 1)]
    seqs = [[1, 2, 3, 1, 2], [4, 5, 10, 4, 5, 9], [6, 7, 8, 6, 7], [1, 3, 2, 4, 5], [9, 10, 4, 9, 10],
            [6, 8, 7, 6, 8, 7]]
    return Dataset(name="tiny", user_ids=[f"u{i}" for i in range(len(seqs))],
                   sequences=[np.array(s, np.int64) for s in seqs], items=items, n_items=len(items),
                   checksum="tiny")
