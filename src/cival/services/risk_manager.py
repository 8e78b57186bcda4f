"""The pre-trade risk gate (the risk issue fills it in; every order already passes through it).

Contract with the order path (`services/order_management.py`):

- `RiskGate.check(order, instrument, reference_price)` runs for every order from every source, after the order is
  validated against its pair and before anything is stored or sent. It raises `RiskRefused` to refuse the order.
- On a refusal the order path stores the order as `rejected` (reason `risk:<limit_type>: <detail>`), calls
  `RiskGate.record_refusal(session, order, refusal)` in the SAME transaction (it writes the `risk_alerts` row and
  returns it), publishes the order and the alert, and answers 422 with the refusal.
"""

from __future__ import annotations

from decimal import Decimal

from sqlalchemy.ext.asyncio import AsyncSession

from cival.core.exceptions import ValidationFailed
from cival.database.models import Order, RiskAlert
from cival.domain.instruments import Instrument


class RiskRefused(ValidationFailed):
    """A limit refused an order (422 `risk_limit_exceeded`); nothing is sent anywhere."""

    code = "risk_limit_exceeded"

    def __init__(
        self,
        limit_type: str,
        detail: str,
        *,
        limit_value: Decimal | None = None,
        attempted_value: Decimal | None = None,
        severity: str = "medium",
    ) -> None:
        super().__init__(
            detail,
            limit_type=limit_type,
            limit_value=None if limit_value is None else format(limit_value, "f"),
            attempted_value=None if attempted_value is None else format(attempted_value, "f"),
        )
        self.limit_type = limit_type
        self.limit_value = limit_value
        self.attempted_value = attempted_value
        self.severity = severity


class RiskGate:
    """Checks an order before it is stored and sent; raises `RiskRefused` to refuse it."""

    async def check(self, order: Order, instrument: Instrument, reference_price: Decimal | None) -> None:
        """No limits yet: every order passes."""
        return None

    async def record_refusal(self, session: AsyncSession, order: Order, refusal: RiskRefused) -> RiskAlert | None:
        """Write the alert for a refused order inside the caller's transaction."""
        return None
