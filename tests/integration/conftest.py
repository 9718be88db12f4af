"""Fixtures shared by the integration tests."""

from __future__ import annotations

from collections.abc import AsyncIterator

import pytest

from daemon.config import SimulatorConfig
from daemon.upstream.simulator import SimulatorServer
from tests.conftest import TEST_API_KEY, TEST_CID


@pytest.fixture
async def sim() -> AsyncIterator[SimulatorServer]:
    """The simulator as a real gRPC server on a free loopback port, default behaviour."""
    server = SimulatorServer(SimulatorConfig(), cid=TEST_CID, api_key=TEST_API_KEY)
    await server.start("127.0.0.1:0")
    yield server
    await server.stop(0.2)
