"""Fixtures for commerce through the real engine: HTTP, websockets, a controllable room clock."""

from __future__ import annotations

from collections.abc import AsyncIterator

import aiohttp
import pytest
from commercekit import Clock, Rest, running

from engine.app import App
from engine.config import Config


@pytest.fixture
def config(config: Config) -> Config:
    """Fast ticks; tap limits high enough for tests that tap many times (the flood test lowers them)."""
    return config.replace(commerce_tick_ms=20, tap_rate=1000.0, tap_burst=1000, msg_rate=1000.0, msg_burst=1000)


@pytest.fixture
def clock() -> Clock:
    return Clock()


@pytest.fixture
async def app(config: Config, clock: Clock) -> AsyncIterator[App]:
    async with running(config, clock) as engine:
        yield engine


@pytest.fixture
async def rest(app: App) -> AsyncIterator[Rest]:
    async with aiohttp.ClientSession() as session:
        yield Rest(app, session)


@pytest.fixture
def admin(app: App) -> str:
    return app.admin_key
