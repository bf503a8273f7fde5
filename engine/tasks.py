"""Stopping the background tasks the engine's parts run (tickers, heartbeats, sweepers, readers)."""

from __future__ import annotations

import asyncio
import contextlib
from typing import Any


async def cancel_and_wait(*tasks: asyncio.Task[Any] | None) -> None:
    """Cancel ``tasks`` (None: no task) and wait until each has ended, so nothing of them runs after
    the caller's stop; their cancellation is how they end, not an error."""
    running = [task for task in tasks if task is not None]
    for task in running:
        task.cancel()
    for task in running:
        with contextlib.suppress(asyncio.CancelledError):
            await task
