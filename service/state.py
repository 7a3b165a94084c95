"""Serving state and its lifecycle: the experiments config and one warm bundle + micro-batcher per variant.

A reload builds a complete new state off to the side (bundles whose manifest did not change are kept, with
their batchers), then swaps one reference, so a request sees either the old or the new config, never a mix;
batchers no longer served are drained and stopped. The request path is `service.serving`.
"""

from __future__ import annotations

import asyncio
import logging
import signal
import time
from collections.abc import Awaitable, Callable
from concurrent.futures import Executor
from dataclasses import dataclass, field
from typing import Any

from scoter.bundle import read_manifest
from scoter.ranker import ServingBundle, open_bundle
from service.batcher import MicroBatcher
from service.experiments import LoadedConfig, load_config, single_bundle_config
from service.metrics import ServiceMetrics
from service.settings import ServiceSettings

log = logging.getLogger(__name__)

RankBatch = Callable[[ServingBundle, list[Any]], list[Any]]  # (bundle, rows) -> one result per row, worker thread


@dataclass
class VariantRuntime:
    name: str
    bundle: ServingBundle
    batcher: MicroBatcher
    manifest_sha256: str


@dataclass
class ServingState:
    loaded: LoadedConfig
    variants: dict[str, VariantRuntime]
    loaded_at: float = field(default_factory=time.time)


class ServingStates:
    """The current ServingState, and building, swapping and stopping states."""

    def __init__(self, settings: ServiceSettings, metrics: ServiceMetrics, executor: Executor, rank: RankBatch):
        self.settings = settings
        self.metrics = metrics
        self.executor = executor
        self._rank = rank
        self.current: ServingState | None = None
        self._reload_lock = asyncio.Lock()

    def _load_config(self) -> LoadedConfig:
        s = self.settings
        return single_bundle_config(s.bundle) if s.bundle is not None else load_config(s.experiments)

    async def start(self) -> ServingState:
        self.current = await self._build(self._load_config(), reuse={})
        return self.current

    async def reload(self) -> tuple[ServingState | None, ServingState]:
        """(old, new) after swapping in a state built from the re-read config; raises ValueError if it is bad
        (the old state keeps serving)."""
        async with self._reload_lock:
            loaded = await asyncio.to_thread(self._load_config)
            old = self.current
            new = await self._build(loaded, reuse=old.variants if old else {})
            self.current = new
            kept = {id(v.batcher) for v in new.variants.values()}
            for v in (old.variants.values() if old else []):
                if id(v.batcher) not in kept:  # bundles no longer served: drain, then stop
                    await v.batcher.stop()
            return old, new

    async def _build(self, loaded: LoadedConfig, reuse: dict[str, VariantRuntime]) -> ServingState:
        reusable = {str(v.bundle.path.resolve()): v for v in reuse.values()}
        variants: dict[str, VariantRuntime] = {}
        started: list[VariantRuntime] = []
        try:
            for name, path in loaded.config.bundle_paths().items():
                sha = (await asyncio.to_thread(read_manifest, path)).manifest_sha256
                old = reusable.get(str(path.resolve()))
                if old is not None and old.manifest_sha256 == sha:
                    variants[name] = VariantRuntime(name, old.bundle, old.batcher, sha)
                    continue
                variants[name] = rt = await asyncio.to_thread(self._open_variant, name, path, sha)
                await rt.batcher.start()
                started.append(rt)
        except BaseException:
            for rt in started:
                await rt.batcher.stop()
            raise
        self.metrics.model_info.clear()
        for rt in variants.values():
            self.metrics.model_info.labels(rt.name, rt.bundle.model_id, rt.bundle.model_version,
                                           rt.bundle.provider).set(1)
        return ServingState(loaded, variants)

    def _open_variant(self, name: str, path, sha: str) -> VariantRuntime:
        s = self.settings
        bundle = open_bundle(path, providers=s.providers, intra_op_threads=s.ort_intra_op_threads,
                             inter_op_threads=s.ort_inter_op_threads)
        took = bundle.warmup(s.warmup_runs, s.max_batch)
        log.info("variant %s warmed in %.3fs on %s", name, took, bundle.provider)
        batcher: MicroBatcher = MicroBatcher(
            lambda rows, b=bundle: self._rank(b, rows), executor=self.executor, max_batch=s.max_batch,
            max_wait_ms=s.max_wait_ms, capacity=s.queue_capacity, workers=s.inference_workers,
            queue_timeout_ms=s.queue_timeout_ms or None, on_batch=self.metrics.batch_size.observe,
            name=f"batcher[{name}]")
        return VariantRuntime(name, bundle, batcher, sha)

    async def stop(self, drain_timeout_s: float) -> None:
        state, self.current = self.current, None
        for v in (state.variants.values() if state else []):
            await v.batcher.stop(drain_timeout_s=drain_timeout_s)  # queued jobs finish first

    def install_sighup(self, reload: Callable[[], Awaitable[Any]]) -> bool:
        """SIGHUP -> `reload()` (main thread only); returns whether the handler was installed."""
        loop = asyncio.get_running_loop()

        def _on_hup() -> None:
            async def _go() -> None:
                try:
                    await reload()
                except Exception:
                    log.exception("SIGHUP reload failed; keeping the current config")
            loop.create_task(_go())

        try:
            loop.add_signal_handler(signal.SIGHUP, _on_hup)
            return True
        except (NotImplementedError, RuntimeError, ValueError):
            return False

    def remove_sighup(self) -> None:
        try:
            asyncio.get_running_loop().remove_signal_handler(signal.SIGHUP)
        except (NotImplementedError, RuntimeError, ValueError):
            pass
