"""The market-data L2 book: ordering rules, derived prices and the JSON form stored in snapshots."""

from __future__ import annotations

import json
from datetime import UTC, datetime, timedelta, timezone
from decimal import Decimal

import pytest

from cival.domain.order_book import BookLevel, InvalidOrderBook, OrderBookL2

NOW = datetime(2024, 3, 10, 12, 0, tzinfo=UTC)


def level(price: str, quantity: str) -> BookLevel:
    return BookLevel(Decimal(price), Decimal(quantity))


def book(bids: list[BookLevel], asks: list[BookLevel]) -> OrderBookL2:
    return OrderBookL2("BTC/USDT", "paper", tuple(bids), tuple(asks), NOW)


BOOK = book(
    [level("99.98", "1.5"), level("99.97", "2"), level("99.90", "10")],
    [level("100.02", "0.5"), level("100.05", "3"), level("101", "0.00000001")],
)


def test_best_prices_mid_and_spread() -> None:
    assert BOOK.best_bid == level("99.98", "1.5")
    assert BOOK.best_ask == level("100.02", "0.5")
    assert BOOK.mid == Decimal(100)
    assert BOOK.spread == Decimal("0.04")


def test_mid_can_fall_between_ticks() -> None:
    assert book([level("1.00", "1")], [level("1.01", "1")]).mid == Decimal("1.005")


def test_one_sided_and_empty_books() -> None:
    only_bids = book([level("10", "1")], [])
    assert only_bids.best_ask is None
    assert only_bids.mid is None
    assert only_bids.spread is None
    empty = book([], [])
    assert (empty.best_bid, empty.best_ask, empty.mid, empty.spread) == (None, None, None, None)


def test_depth_keeps_the_best_levels() -> None:
    top = BOOK.depth(2)
    assert top.bids == BOOK.bids[:2]
    assert top.asks == (level("100.02", "0.5"), level("100.05", "3"))
    assert (top.symbol, top.exchange, top.timestamp) == (BOOK.symbol, BOOK.exchange, BOOK.timestamp)
    assert BOOK.depth(0).bids == ()
    assert BOOK.depth(50) == BOOK
    with pytest.raises(ValueError, match="must not be negative"):
        BOOK.depth(-1)


def test_json_levels_are_exact_fixed_point_strings() -> None:
    levels = BOOK.to_json_levels()
    assert levels == {
        "bids": [["99.98", "1.5"], ["99.97", "2"], ["99.90", "10"]],
        "asks": [["100.02", "0.5"], ["100.05", "3"], ["101", "0.00000001"]],
    }
    assert json.loads(json.dumps(levels)) == levels


def test_json_levels_round_trip() -> None:
    levels = BOOK.to_json_levels()
    again = OrderBookL2.from_json_levels("BTC/USDT", "paper", levels["bids"], levels["asks"], NOW)
    assert again == BOOK


@pytest.mark.parametrize(
    ("bids", "asks", "message"),
    [
        ([level("99", "1"), level("99.5", "1")], [], "bids must be strictly descending: 99.5 follows 99"),
        ([level("99", "1"), level("99", "2")], [], "bids must be strictly descending"),
        ([], [level("101", "1"), level("100", "1")], "asks must be strictly ascending: 100 follows 101"),
        ([level("100", "1")], [level("100", "1")], "book is crossed: best bid 100 >= best ask 100"),
        ([level("101", "1")], [level("100", "1")], "book is crossed"),
    ],
)
def test_malformed_books_are_refused(bids: list[BookLevel], asks: list[BookLevel], message: str) -> None:
    with pytest.raises(InvalidOrderBook, match=message):
        book(bids, asks)


@pytest.mark.parametrize(
    ("price", "quantity", "message"),
    [
        (Decimal(0), Decimal(1), "level price 0 must be positive"),
        (Decimal(1), Decimal(-1), "level quantity -1 must be positive"),
        (Decimal("NaN"), Decimal(1), "must be a finite Decimal"),
        (1.5, Decimal(1), "must be a finite Decimal"),
    ],
)
def test_invalid_levels_are_refused(price: Decimal, quantity: Decimal, message: str) -> None:
    with pytest.raises(InvalidOrderBook, match=message):
        BookLevel(price, quantity)


def test_timestamp_must_be_aware_and_is_kept_in_utc() -> None:
    with pytest.raises(InvalidOrderBook, match="naive"):
        OrderBookL2("BTC/USDT", "paper", (), (), datetime(2024, 1, 1))  # noqa: DTZ001 - the naive value is the point
    tokyo = OrderBookL2("BTC/USDT", "paper", (), (), datetime(2024, 1, 1, 9, tzinfo=timezone(timedelta(hours=9))))
    assert tokyo.timestamp == datetime(2024, 1, 1, tzinfo=UTC)
    assert tokyo.timestamp.tzinfo is UTC


def test_invalid_order_book_is_a_value_error() -> None:
    assert issubclass(InvalidOrderBook, ValueError)
