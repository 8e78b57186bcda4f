"""The pre-trade risk gate (the risk issue fills it in; every order already passes through it)."""

from __future__ import annotations

from cival.database.models import Order


class RiskGate:
    """Checks an order before it is stored and sent; raises a `CivalError` to refuse it."""

    async def check(self, order: Order) -> None:
        """No limits yet: every order passes."""
        return None
