"""The matching engine's price ladders: the best level is always the best of the levels that hold live orders.

The ladder keeps a heap of ticks and drops entries lazily (a level emptied by cancels stays in the heap until it
reaches the top) and rebuilds the heap when stale entries outnumber the levels; here against a plain sorted list, over
sequences long enough to rebuild it several times.
"""

from __future__ import annotations

from datetime import UTC, datetime
from decimal import Decimal

from hypothesis import given, settings
from hypothesis import strategies as st

from cival.domain.matching_events import OrderRequest
from cival.domain.orders import OrderSide, OrderType, TimeInForce
from cival.domain.resting_book import Ladder, RestingOrder

T0 = datetime(2024, 3, 10, tzinfo=UTC)
OPERATIONS = st.lists(
    st.one_of(
        st.tuples(st.just("add"), st.integers(1, 1000)),
        st.tuples(st.just("add"), st.integers(1, 1000)),
        st.tuples(st.just("cancel"), st.integers(0, 10_000)),
        st.tuples(st.just("cancel"), st.integers(0, 10_000)),
        st.tuples(st.just("take_best"), st.just(0)),
    ),
    min_size=100,
    max_size=500,
)


def request(n: int, ticks: int) -> OrderRequest:
    price = Decimal(ticks) / 100
    return OrderRequest(f"o{n}", OrderSide.BUY, OrderType.LIMIT, Decimal(1), TimeInForce.GTC, T0, price=price)


@settings(max_examples=60, deadline=None)
@given(st.booleans(), OPERATIONS)
def test_best_is_the_best_level_with_live_orders(highest_first: bool, operations: list[tuple[str, int]]) -> None:
    ladder = Ladder(highest_first=highest_first)
    live: list[RestingOrder] = []  # the reference: every live order
    most_levels = 0
    for n, (kind, value) in enumerate(operations):
        if kind == "add":
            live.append(ladder.add(request(n, value), Decimal(1), n, None, value, Decimal(value) / 100))
        elif kind == "cancel" and live:
            order = live.pop(value % len(live))
            order.is_alive = False
            ladder.discard(order)
        elif kind == "take_best" and live:
            # What matching does when a level fills completely: its orders leave, then the level.
            best = ladder.best()
            assert best is not None
            for order in [o for o in live if o.level is best]:
                live.remove(order)
                order.is_alive = False
            ladder.remove_best()
        levels_with_orders = {order.level.ticks for order in live}
        most_levels = max(most_levels, len(levels_with_orders))
        best = ladder.best()
        if not levels_with_orders:
            assert best is None
            continue
        assert best is not None
        assert best.ticks == (max(levels_with_orders) if highest_first else min(levels_with_orders))
        assert best.count == sum(1 for order in live if order.level is best)
        assert [o for o in best.orders if o.is_alive] == [o for o in live if o.level is best]  # time priority
        assert set(ladder.levels) == levels_with_orders
        assert len(ladder.heap) <= 2 * most_levels + 65  # stale entries stay bounded


def test_stale_entries_are_dropped_and_the_order_kept_when_the_heap_is_rebuilt() -> None:
    for highest_first in (True, False):
        ladder = Ladder(highest_first=highest_first)
        orders = [ladder.add(request(t, t), Decimal(1), t, None, t, Decimal(t) / 100) for t in range(1, 201)]
        keep = {50, 120, 180}
        for order in orders:
            if order.level.ticks not in keep:
                order.is_alive = False
                ladder.discard(order)
        assert len(ladder.heap) == 200  # the emptied levels' entries are still there
        ladder.add(request(999, 90), Decimal(1), 999, None, 90, Decimal("0.90"))  # opening a level rebuilds the heap
        assert sorted(ladder.heap) == sorted((-t if highest_first else t) for t in (50, 90, 120, 180))
        taken = []
        while (best := ladder.best()) is not None:
            taken.append(best.ticks)
            ladder.remove_best()
        assert taken == ([180, 120, 90, 50] if highest_first else [50, 90, 120, 180])
