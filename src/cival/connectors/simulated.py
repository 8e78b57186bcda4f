"""The simulated market (the embedded default's data source): a seeded random walk per paper pair."""

from __future__ import annotations

from collections.abc import Mapping
from datetime import datetime
from decimal import Decimal

from cival.connectors.base import SourceUnavailable
from cival.domain.instruments import Instrument
from cival.domain.simulated_market import MarketEvent, SimulatedMarket


class SimulatedSource:
    """A `MarketDataSource` over `SimulatedMarket`; `fail()` makes it unreachable, to exercise the monitor."""

    def __init__(
        self,
        instruments: tuple[Instrument, ...],
        *,
        seed: int,
        start_time: datetime,
        step_seconds: float,
        start_prices: Mapping[str, Decimal],
        volatilities: Mapping[str, float],
    ) -> None:
        self.market = SimulatedMarket(
            instruments,
            seed=seed,
            start_prices=start_prices,
            volatilities=volatilities,
            step_seconds=step_seconds,
            start_time=start_time,
        )
        self._failure: SourceUnavailable | None = None

    @property
    def exchange(self) -> str:
        return self.market.instruments[0].exchange

    @property
    def instruments(self) -> tuple[Instrument, ...]:
        return self.market.instruments

    def fail(self, message: str = "simulated outage", *, maintenance: bool = False) -> None:
        """Every poll fails until `recover()`."""
        self._failure = SourceUnavailable(message, maintenance=maintenance)

    def recover(self) -> None:
        self._failure = None

    async def poll(self) -> list[MarketEvent]:
        if self._failure is not None:
            raise self._failure
        return self.market.step()
