"""Event-loop lag: how late the loop runs a timer. Under overload the loop itself is the queue (requests wait in
it before any handler runs), so a request that finds the loop this late cannot start in time either.

One timer per interval, nothing per request: the request path reads `lag_s`.
"""

from __future__ import annotations

import asyncio
import contextlib
from collections import deque
from collections.abc import Callable


class LoopLagMonitor:
    """Measures the loop's lateness every `interval_s`. `lag_s` is the smallest of the last `window` samples:
    a loop that is persistently late (a backlog), not one long step (a big response, a GC pause), which
    delays one sample and is over by the next."""

    def __init__(self, interval_s: float = 0.01, window: int = 3,
                 on_sample: Callable[[float], None] | None = None):
        self.interval_s = interval_s
        self.on_sample = on_sample or (lambda lag: None)
        self.lag_s = 0.0
        self._recent = deque([0.0] * window, maxlen=window)
        self._task: asyncio.Task | None = None

    def start(self) -> None:
        if self._task is None:
            self._task = asyncio.get_running_loop().create_task(self._run(), name="loop-lag")

    async def _run(self) -> None:
        loop = asyncio.get_running_loop()
        while True:
            t0 = loop.time()
            await asyncio.sleep(self.interval_s)
            sample = max(0.0, loop.time() - t0 - self.interval_s)
            self._recent.append(sample)
            self.lag_s = min(self._recent)
            self.on_sample(sample)

    async def stop(self) -> None:
        if self._task is not None:
            self._task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._task
            self._task = None
