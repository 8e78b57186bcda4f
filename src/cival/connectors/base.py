"""What the platform needs from a venue, whatever the venue is: market data now, order routing later.

Everything venue-specific (request shapes, symbols, error codes, floats) stays inside the connector; what crosses
this boundary is domain objects with exact Decimals.
"""

from __future__ import annotations

from typing import Protocol

from cival.domain.instruments import Instrument
from cival.domain.simulated_market import MarketEvent


class SourceUnavailable(Exception):
    """The venue did not answer (network, maintenance, outage); the monitor marks it offline until it does."""

    def __init__(self, message: str, *, maintenance: bool = False) -> None:
        super().__init__(message)
        self.maintenance = maintenance


class MarketDataSource(Protocol):
    """A venue's market data, polled once per step: the trades since the last poll and fresh books."""

    @property
    def exchange(self) -> str: ...

    @property
    def instruments(self) -> tuple[Instrument, ...]: ...

    async def poll(self) -> list[MarketEvent]:
        """The events since the previous poll; raises `SourceUnavailable` when the venue cannot be reached."""
        ...
