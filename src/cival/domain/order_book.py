"""Market-data level-2 order book: aggregated price levels as a venue publishes them (not the matching engine)."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from datetime import UTC, datetime
from decimal import Decimal


class InvalidOrderBook(ValueError):
    """A book whose levels are unsorted, duplicated, non-positive or crossed."""


def _fixed(value: Decimal) -> str:
    # Fixed-point text: str() would write 0.00000001 as "1E-8", which other readers of the JSON may not expect.
    return format(value, "f")


@dataclass(frozen=True)
class BookLevel:
    """The total quantity resting at one price."""

    price: Decimal
    quantity: Decimal

    def __post_init__(self) -> None:
        for name in ("price", "quantity"):
            value = getattr(self, name)
            if not isinstance(value, Decimal) or not value.is_finite():
                raise InvalidOrderBook(f"level {name} {value!r} must be a finite Decimal")
            if value <= 0:
                raise InvalidOrderBook(f"level {name} {value} must be positive")

    def to_json(self) -> list[str]:
        """`[price, quantity]` as strings, exact for a JSON column."""
        return [_fixed(self.price), _fixed(self.quantity)]


@dataclass(frozen=True)
class OrderBookL2:
    """A snapshot of one pair's book: bids best (highest) first, asks best (lowest) first."""

    symbol: str
    exchange: str
    bids: tuple[BookLevel, ...]
    asks: tuple[BookLevel, ...]
    timestamp: datetime

    def __post_init__(self) -> None:
        if self.timestamp.tzinfo is None or self.timestamp.utcoffset() is None:
            raise InvalidOrderBook(f"timestamp {self.timestamp.isoformat()} is naive; it must be timezone-aware")
        object.__setattr__(self, "timestamp", self.timestamp.astimezone(UTC))
        object.__setattr__(self, "bids", tuple(self.bids))
        object.__setattr__(self, "asks", tuple(self.asks))
        for worse, better in zip(self.bids[1:], self.bids, strict=False):
            if worse.price >= better.price:
                raise InvalidOrderBook(f"bids must be strictly descending: {worse.price} follows {better.price}")
        for worse, better in zip(self.asks[1:], self.asks, strict=False):
            if worse.price <= better.price:
                raise InvalidOrderBook(f"asks must be strictly ascending: {worse.price} follows {better.price}")
        if self.bids and self.asks and self.bids[0].price >= self.asks[0].price:
            raise InvalidOrderBook(f"book is crossed: best bid {self.bids[0].price} >= best ask {self.asks[0].price}")

    @classmethod
    def from_json_levels(
        cls,
        symbol: str,
        exchange: str,
        bids: Sequence[Sequence[str]],
        asks: Sequence[Sequence[str]],
        timestamp: datetime,
    ) -> OrderBookL2:
        """Rebuild a book from the `[[price, quantity], ...]` text stored in the snapshot columns."""
        return cls(
            symbol=symbol,
            exchange=exchange,
            bids=tuple(BookLevel(Decimal(p), Decimal(q)) for p, q in bids),
            asks=tuple(BookLevel(Decimal(p), Decimal(q)) for p, q in asks),
            timestamp=timestamp,
        )

    @property
    def best_bid(self) -> BookLevel | None:
        """The highest bid, or None on an empty side."""
        return self.bids[0] if self.bids else None

    @property
    def best_ask(self) -> BookLevel | None:
        """The lowest ask, or None on an empty side."""
        return self.asks[0] if self.asks else None

    @property
    def mid(self) -> Decimal | None:
        """Halfway between best bid and ask (may have one more decimal than the tick), or None if a side is empty."""
        if not self.bids or not self.asks:
            return None
        return (self.bids[0].price + self.asks[0].price) / 2

    @property
    def spread(self) -> Decimal | None:
        """Best ask minus best bid, or None if a side is empty."""
        if not self.bids or not self.asks:
            return None
        return self.asks[0].price - self.bids[0].price

    def depth(self, levels: int) -> OrderBookL2:
        """The same book cut to its best `levels` levels per side."""
        if levels < 0:
            raise ValueError(f"depth {levels} must not be negative")
        return OrderBookL2(self.symbol, self.exchange, self.bids[:levels], self.asks[:levels], self.timestamp)

    def to_json_levels(self) -> dict[str, list[list[str]]]:
        """`{"bids": [[price, qty], ...], "asks": [...]}` as strings, for the snapshot table's JSON columns."""
        return {"bids": [level.to_json() for level in self.bids], "asks": [level.to_json() for level in self.asks]}
