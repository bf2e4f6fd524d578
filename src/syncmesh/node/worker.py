"""The store thread: every SQLite call of a node runs on one worker thread.

SQLite calls block; running them on the event loop would stall every session
while a large batch commits.  One thread (not a pool) because the store and
its HLC have one owner (STYLE.md 2.1), and SQLite serialises writers anyway.
"""

from __future__ import annotations

import asyncio
import functools
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from typing import ParamSpec, TypeVar

P = ParamSpec("P")
T = TypeVar("T")


class StoreWorker:
    def __init__(self) -> None:
        self._executor = ThreadPoolExecutor(max_workers=1, thread_name_prefix="syncmesh-store")
        self._calls = 0  # calls submitted and not yet returned to their caller
        self._idle = asyncio.Event()  # set while no call is under way
        self._idle.set()

    @property
    def busy(self) -> bool:
        return self._calls > 0

    async def wait_idle(self) -> None:
        """Until no call is under way (the capture loop looks right after an apply)."""
        await self._idle.wait()

    async def call(self, function: Callable[P, T], *args: P.args, **kwargs: P.kwargs) -> T:
        loop = asyncio.get_running_loop()
        self._calls += 1
        self._idle.clear()
        try:
            return await loop.run_in_executor(
                self._executor, functools.partial(function, *args, **kwargs)
            )
        finally:
            self._calls -= 1
            if not self._calls:
                self._idle.set()

    def shutdown(self) -> None:
        self._executor.shutdown(wait=True)
