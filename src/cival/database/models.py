"""SQLAlchemy models of the spec's 22 tables, with the spec's names, types, defaults and constraints.

Deviations from the spec's SQL are deliberate and recorded in docs/decisions.md.
"""

from __future__ import annotations

import uuid
from datetime import UTC, date, datetime
from decimal import Decimal
from typing import Any

from sqlalchemy import (
    Boolean,
    Date,
    ForeignKey,
    Index,
    Integer,
    MetaData,
    String,
    Text,
    UniqueConstraint,
    Uuid,
    text,
    true,
)
from sqlalchemy import false as sql_false
from sqlalchemy.orm import DeclarativeBase, Mapped, mapped_column

from cival.database.types import ExactDecimal, JSONType, UTCDateTime, gen_random_uuid, money_zero, utcnow

NAMING_CONVENTION = {
    "ix": "ix_%(table_name)s_%(column_0_N_name)s",
    "uq": "uq_%(table_name)s_%(column_0_N_name)s",
    "fk": "fk_%(table_name)s_%(column_0_name)s_%(referred_table_name)s",
    "pk": "pk_%(table_name)s",
}

Money = ExactDecimal(20, 8)
"""`DECIMAL(20,8)`: prices, quantities, balances, values."""


def _now() -> datetime:
    return datetime.now(UTC)


class Base(DeclarativeBase):
    metadata = MetaData(naming_convention=NAMING_CONVENTION)


def _id() -> Mapped[uuid.UUID]:
    return mapped_column(Uuid, primary_key=True, default=uuid.uuid4, server_default=gen_random_uuid())


def _created_at() -> Mapped[datetime]:
    return mapped_column(UTCDateTime, default=_now, server_default=utcnow())


def _updated_at() -> Mapped[datetime]:
    return mapped_column(UTCDateTime, default=_now, onupdate=_now, server_default=utcnow())


def _owner() -> Mapped[uuid.UUID]:
    """The owning user of a user-owned row; deleting the user deletes the row."""
    return mapped_column(Uuid, ForeignKey("users.id", ondelete="CASCADE"), nullable=False)


def _account() -> Mapped[uuid.UUID]:
    return mapped_column(Uuid, ForeignKey("trading_accounts.id"), nullable=False)


def _zero() -> Mapped[Decimal]:
    return mapped_column(Money, default=Decimal(0), server_default=money_zero())


# --- 1. Users & authentication ---------------------------------------------------------------------------


class User(Base):
    __tablename__ = "users"

    id: Mapped[uuid.UUID] = _id()
    email: Mapped[str] = mapped_column(String(255), unique=True, nullable=False)
    password_hash: Mapped[str | None] = mapped_column(String(255))
    full_name: Mapped[str | None] = mapped_column(String(255))
    role: Mapped[str] = mapped_column(String(50), default="trader", server_default="trader")
    is_active: Mapped[bool] = mapped_column(Boolean, default=True, server_default=true())
    created_at: Mapped[datetime] = _created_at()
    updated_at: Mapped[datetime] = _updated_at()


class UserSession(Base):
    __tablename__ = "user_sessions"
    # Every authenticated request looks its session up by token hash; unique, since a hash names one session.
    __table_args__ = (Index("idx_user_sessions_token_hash", "token_hash", unique=True),)

    id: Mapped[uuid.UUID] = _id()
    user_id: Mapped[uuid.UUID] = _owner()
    token_hash: Mapped[str] = mapped_column(String(255), nullable=False)
    expires_at: Mapped[datetime] = mapped_column(UTCDateTime, nullable=False)
    created_at: Mapped[datetime] = _created_at()


class UserApiKey(Base):
    __tablename__ = "user_api_keys"

    id: Mapped[uuid.UUID] = _id()
    user_id: Mapped[uuid.UUID] = _owner()
    exchange: Mapped[str] = mapped_column(String(50), nullable=False)
    api_key_encrypted: Mapped[str] = mapped_column(Text, nullable=False)
    api_secret_encrypted: Mapped[str] = mapped_column(Text, nullable=False)
    passphrase_encrypted: Mapped[str | None] = mapped_column(Text)
    is_active: Mapped[bool] = mapped_column(Boolean, default=True, server_default=true())
    created_at: Mapped[datetime] = _created_at()


# --- 2. Trading ------------------------------------------------------------------------------------------


class TradingAccount(Base):
    __tablename__ = "trading_accounts"
    __table_args__ = (UniqueConstraint("user_id", "exchange", "account_id"),)

    id: Mapped[uuid.UUID] = _id()
    user_id: Mapped[uuid.UUID] = _owner()
    exchange: Mapped[str] = mapped_column(String(50), nullable=False)
    account_id: Mapped[str] = mapped_column(String(255), nullable=False)
    account_type: Mapped[str] = mapped_column(String(50), default="spot", server_default="spot")
    is_active: Mapped[bool] = mapped_column(Boolean, default=True, server_default=true())
    created_at: Mapped[datetime] = _created_at()


class TradingPair(Base):
    __tablename__ = "trading_pairs"
    __table_args__ = (UniqueConstraint("symbol", "exchange"),)

    id: Mapped[uuid.UUID] = _id()
    symbol: Mapped[str] = mapped_column(String(50), nullable=False)
    base_asset: Mapped[str] = mapped_column(String(20), nullable=False)
    quote_asset: Mapped[str] = mapped_column(String(20), nullable=False)
    exchange: Mapped[str] = mapped_column(String(50), nullable=False)
    min_order_size: Mapped[Decimal | None] = mapped_column(Money)
    max_order_size: Mapped[Decimal | None] = mapped_column(Money)
    tick_size: Mapped[Decimal | None] = mapped_column(Money)
    step_size: Mapped[Decimal | None] = mapped_column(Money)
    is_active: Mapped[bool] = mapped_column(Boolean, default=True, server_default=true())
    created_at: Mapped[datetime] = _created_at()


WORKING_ORDERS = text("status IN ('pending', 'partial', 'unknown')")
"""The orders still working (not filled, cancelled or rejected): `idx_orders_user_working`'s predicate."""


class Order(Base):
    __tablename__ = "orders"
    __table_args__ = (
        Index("idx_orders_user_status", "user_id", "status"),
        # Beyond the spec (0004, D18): one order per client id and user, so a retried placement finds it.
        Index("idx_orders_user_client_order_id", "user_id", "client_order_id", unique=True),
        # Beyond the spec (0006, D54): the gate reads a user's working orders for every batch; this keeps that read
        # to those orders, however long the user's history (`WORKING_ORDERS` must stay the non-terminal statuses).
        Index("idx_orders_user_working", "user_id", postgresql_where=WORKING_ORDERS, sqlite_where=WORKING_ORDERS),
    )

    id: Mapped[uuid.UUID] = _id()
    user_id: Mapped[uuid.UUID] = _owner()
    account_id: Mapped[uuid.UUID | None] = mapped_column(Uuid, ForeignKey("trading_accounts.id"))
    external_order_id: Mapped[str | None] = mapped_column(String(255))
    symbol: Mapped[str] = mapped_column(String(50), nullable=False)
    side: Mapped[str] = mapped_column(String(10), nullable=False)
    type: Mapped[str] = mapped_column(String(20), nullable=False)
    quantity: Mapped[Decimal] = mapped_column(Money, nullable=False)
    price: Mapped[Decimal | None] = mapped_column(Money)
    stop_price: Mapped[Decimal | None] = mapped_column(Money)
    time_in_force: Mapped[str] = mapped_column(String(10), default="GTC", server_default="GTC")
    status: Mapped[str] = mapped_column(String(20), default="pending", server_default="pending")
    filled_quantity: Mapped[Decimal] = _zero()
    average_price: Mapped[Decimal | None] = mapped_column(Money)
    fees: Mapped[Decimal] = _zero()
    exchange: Mapped[str] = mapped_column(String(50), nullable=False)
    created_at: Mapped[datetime] = _created_at()
    updated_at: Mapped[datetime] = _updated_at()
    # Beyond the spec (0004, D18/D19).
    client_order_id: Mapped[str | None] = mapped_column(String(64))
    post_only: Mapped[bool] = mapped_column(Boolean, default=False, server_default=sql_false())
    triggered_at: Mapped[datetime | None] = mapped_column(UTCDateTime)
    reject_reason: Mapped[str | None] = mapped_column(String(255))
    reserved: Mapped[Decimal] = _zero()


Index("idx_orders_symbol_created", Order.symbol, Order.created_at.desc())


class Trade(Base):
    __tablename__ = "trades"
    __table_args__ = (
        # Beyond the spec (0004, D18): a venue's fill is stored once, so it is never applied twice.
        Index("idx_trades_exchange_external_trade_id", "exchange", "external_trade_id", unique=True),
        # Beyond the spec (0007, D56): an order's fills, read by the fill batch for an order filled in part already.
        Index("idx_trades_order_id", "order_id"),
    )

    id: Mapped[uuid.UUID] = _id()
    order_id: Mapped[uuid.UUID | None] = mapped_column(Uuid, ForeignKey("orders.id"))
    user_id: Mapped[uuid.UUID] = _owner()
    external_trade_id: Mapped[str | None] = mapped_column(String(255))
    symbol: Mapped[str] = mapped_column(String(50), nullable=False)
    side: Mapped[str] = mapped_column(String(10), nullable=False)
    quantity: Mapped[Decimal] = mapped_column(Money, nullable=False)
    price: Mapped[Decimal] = mapped_column(Money, nullable=False)
    fees: Mapped[Decimal] = _zero()
    exchange: Mapped[str] = mapped_column(String(50), nullable=False)
    executed_at: Mapped[datetime] = mapped_column(UTCDateTime, nullable=False)
    created_at: Mapped[datetime] = _created_at()


Index("idx_trades_user_executed", Trade.user_id, Trade.executed_at.desc())


# --- 3. Portfolio ----------------------------------------------------------------------------------------


class Position(Base):
    __tablename__ = "positions"
    __table_args__ = (
        UniqueConstraint("user_id", "account_id", "symbol"),
        Index("idx_positions_user_symbol", "user_id", "symbol"),
    )

    id: Mapped[uuid.UUID] = _id()
    user_id: Mapped[uuid.UUID] = _owner()
    account_id: Mapped[uuid.UUID] = _account()
    symbol: Mapped[str] = mapped_column(String(50), nullable=False)
    size: Mapped[Decimal] = mapped_column(Money, nullable=False)
    average_price: Mapped[Decimal] = mapped_column(Money, nullable=False)
    market_value: Mapped[Decimal | None] = mapped_column(Money)
    unrealized_pnl: Mapped[Decimal | None] = mapped_column(Money)
    exchange: Mapped[str] = mapped_column(String(50), nullable=False)
    updated_at: Mapped[datetime] = _updated_at()


class Balance(Base):
    __tablename__ = "balances"
    __table_args__ = (UniqueConstraint("user_id", "account_id", "asset"),)

    id: Mapped[uuid.UUID] = _id()
    user_id: Mapped[uuid.UUID] = _owner()
    account_id: Mapped[uuid.UUID] = _account()
    asset: Mapped[str] = mapped_column(String(20), nullable=False)
    free: Mapped[Decimal] = _zero()
    locked: Mapped[Decimal] = _zero()
    total: Mapped[Decimal] = _zero()
    usd_value: Mapped[Decimal | None] = mapped_column(Money)
    exchange: Mapped[str] = mapped_column(String(50), nullable=False)
    updated_at: Mapped[datetime] = _updated_at()


class PortfolioSnapshot(Base):
    __tablename__ = "portfolio_snapshots"
    __table_args__ = (UniqueConstraint("user_id", "snapshot_date"),)

    id: Mapped[uuid.UUID] = _id()
    user_id: Mapped[uuid.UUID] = _owner()
    total_value: Mapped[Decimal] = mapped_column(Money, nullable=False)
    total_pnl: Mapped[Decimal | None] = mapped_column(Money)
    daily_pnl: Mapped[Decimal | None] = mapped_column(Money)
    positions_count: Mapped[int] = mapped_column(Integer, default=0, server_default="0")
    snapshot_date: Mapped[date] = mapped_column(Date, nullable=False)
    created_at: Mapped[datetime] = _created_at()


# --- 4. Strategies & agents ------------------------------------------------------------------------------


class TradingStrategy(Base):
    __tablename__ = "trading_strategies"

    id: Mapped[uuid.UUID] = _id()
    user_id: Mapped[uuid.UUID] = _owner()
    name: Mapped[str] = mapped_column(String(255), nullable=False)
    description: Mapped[str | None] = mapped_column(Text)
    strategy_type: Mapped[str] = mapped_column(String(50), nullable=False)
    parameters: Mapped[dict[str, Any]] = mapped_column(JSONType, nullable=False)
    is_active: Mapped[bool] = mapped_column(Boolean, default=False, server_default=sql_false())
    performance_metrics: Mapped[dict[str, Any] | None] = mapped_column(JSONType)
    created_at: Mapped[datetime] = _created_at()
    updated_at: Mapped[datetime] = _updated_at()


class TradingAgent(Base):
    __tablename__ = "trading_agents"

    id: Mapped[uuid.UUID] = _id()
    user_id: Mapped[uuid.UUID] = _owner()
    name: Mapped[str] = mapped_column(String(255), nullable=False)
    agent_type: Mapped[str] = mapped_column(String(50), nullable=False)
    configuration: Mapped[dict[str, Any]] = mapped_column(JSONType, nullable=False)
    status: Mapped[str] = mapped_column(String(20), default="inactive", server_default="inactive")
    performance: Mapped[dict[str, Any] | None] = mapped_column(JSONType)
    last_decision_at: Mapped[datetime | None] = mapped_column(UTCDateTime)
    created_at: Mapped[datetime] = _created_at()
    updated_at: Mapped[datetime] = _updated_at()


class TradingSignal(Base):
    __tablename__ = "trading_signals"

    id: Mapped[uuid.UUID] = _id()
    strategy_id: Mapped[uuid.UUID | None] = mapped_column(Uuid, ForeignKey("trading_strategies.id", ondelete="CASCADE"))
    agent_id: Mapped[uuid.UUID | None] = mapped_column(Uuid, ForeignKey("trading_agents.id", ondelete="CASCADE"))
    symbol: Mapped[str] = mapped_column(String(50), nullable=False)
    action: Mapped[str] = mapped_column(String(10), nullable=False)
    strength: Mapped[Decimal] = mapped_column(ExactDecimal(5, 2), nullable=False)
    price: Mapped[Decimal] = mapped_column(Money, nullable=False)
    confidence: Mapped[Decimal] = mapped_column(ExactDecimal(5, 2), nullable=False)
    reasoning: Mapped[str | None] = mapped_column(Text)
    # `metadata` is reserved by SQLAlchemy's declarative base; the column keeps the spec's name.
    signal_metadata: Mapped[dict[str, Any] | None] = mapped_column("metadata", JSONType)
    created_at: Mapped[datetime] = _created_at()


Index("idx_signals_created", TradingSignal.created_at.desc())


# --- 5. Market data --------------------------------------------------------------------------------------


class MarketDataOHLCV(Base):
    __tablename__ = "market_data_ohlcv"
    __table_args__ = (UniqueConstraint("symbol", "exchange", "timeframe", "open_time"),)

    id: Mapped[uuid.UUID] = _id()
    symbol: Mapped[str] = mapped_column(String(50), nullable=False)
    exchange: Mapped[str] = mapped_column(String(50), nullable=False)
    timeframe: Mapped[str] = mapped_column(String(10), nullable=False)
    open_time: Mapped[datetime] = mapped_column(UTCDateTime, nullable=False)
    close_time: Mapped[datetime] = mapped_column(UTCDateTime, nullable=False)
    open_price: Mapped[Decimal] = mapped_column(Money, nullable=False)
    high_price: Mapped[Decimal] = mapped_column(Money, nullable=False)
    low_price: Mapped[Decimal] = mapped_column(Money, nullable=False)
    close_price: Mapped[Decimal] = mapped_column(Money, nullable=False)
    volume: Mapped[Decimal] = mapped_column(Money, nullable=False)
    quote_volume: Mapped[Decimal | None] = mapped_column(Money)
    trades_count: Mapped[int | None] = mapped_column(Integer)
    created_at: Mapped[datetime] = _created_at()


Index(
    "idx_market_data_symbol_time",
    MarketDataOHLCV.symbol,
    MarketDataOHLCV.timeframe,
    MarketDataOHLCV.open_time.desc(),
)


class PriceTicker(Base):
    __tablename__ = "price_tickers"
    __table_args__ = (UniqueConstraint("symbol", "exchange", name="uk_ticker_symbol_exchange"),)

    id: Mapped[uuid.UUID] = _id()
    symbol: Mapped[str] = mapped_column(String(50), nullable=False)
    exchange: Mapped[str] = mapped_column(String(50), nullable=False)
    price: Mapped[Decimal] = mapped_column(Money, nullable=False)
    bid_price: Mapped[Decimal | None] = mapped_column(Money)
    ask_price: Mapped[Decimal | None] = mapped_column(Money)
    volume_24h: Mapped[Decimal | None] = mapped_column(Money)
    change_24h: Mapped[Decimal | None] = mapped_column(ExactDecimal(10, 4))
    updated_at: Mapped[datetime] = mapped_column(UTCDateTime, nullable=False)


class OrderBookSnapshot(Base):
    __tablename__ = "order_book_snapshots"

    id: Mapped[uuid.UUID] = _id()
    symbol: Mapped[str] = mapped_column(String(50), nullable=False)
    exchange: Mapped[str] = mapped_column(String(50), nullable=False)
    bids: Mapped[list[list[str]]] = mapped_column(JSONType, nullable=False)
    asks: Mapped[list[list[str]]] = mapped_column(JSONType, nullable=False)
    timestamp: Mapped[datetime] = mapped_column(UTCDateTime, nullable=False)
    created_at: Mapped[datetime] = _created_at()


# --- 6. Risk ---------------------------------------------------------------------------------------------


class RiskMetric(Base):
    __tablename__ = "risk_metrics"

    id: Mapped[uuid.UUID] = _id()
    user_id: Mapped[uuid.UUID] = _owner()
    portfolio_risk: Mapped[Decimal | None] = mapped_column(ExactDecimal(10, 4))
    value_at_risk: Mapped[Decimal | None] = mapped_column(Money)
    max_drawdown: Mapped[Decimal | None] = mapped_column(ExactDecimal(10, 4))
    sharpe_ratio: Mapped[Decimal | None] = mapped_column(ExactDecimal(10, 4))
    position_risks: Mapped[dict[str, Any] | None] = mapped_column(JSONType)
    calculated_at: Mapped[datetime] = mapped_column(UTCDateTime, nullable=False)
    created_at: Mapped[datetime] = _created_at()


class RiskAlert(Base):
    __tablename__ = "risk_alerts"

    id: Mapped[uuid.UUID] = _id()
    user_id: Mapped[uuid.UUID] = _owner()
    alert_type: Mapped[str] = mapped_column(String(50), nullable=False)
    severity: Mapped[str] = mapped_column(String(20), nullable=False)
    message: Mapped[str] = mapped_column(Text, nullable=False)
    data: Mapped[dict[str, Any] | None] = mapped_column(JSONType)
    acknowledged: Mapped[bool] = mapped_column(Boolean, default=False, server_default=sql_false())
    created_at: Mapped[datetime] = _created_at()


class TradingLimit(Base):
    __tablename__ = "trading_limits"

    id: Mapped[uuid.UUID] = _id()
    user_id: Mapped[uuid.UUID] = _owner()
    limit_type: Mapped[str] = mapped_column(String(50), nullable=False)
    symbol: Mapped[str | None] = mapped_column(String(50))
    limit_value: Mapped[Decimal] = mapped_column(Money, nullable=False)
    current_value: Mapped[Decimal] = _zero()
    is_active: Mapped[bool] = mapped_column(Boolean, default=True, server_default=true())
    created_at: Mapped[datetime] = _created_at()
    updated_at: Mapped[datetime] = _updated_at()


# --- 7. System & monitoring ------------------------------------------------------------------------------


class SystemLog(Base):
    __tablename__ = "system_logs"

    id: Mapped[uuid.UUID] = _id()
    level: Mapped[str] = mapped_column(String(20), nullable=False)
    module: Mapped[str] = mapped_column(String(100), nullable=False)
    message: Mapped[str] = mapped_column(Text, nullable=False)
    data: Mapped[dict[str, Any] | None] = mapped_column(JSONType)
    user_id: Mapped[uuid.UUID | None] = mapped_column(Uuid, ForeignKey("users.id", ondelete="SET NULL"))
    created_at: Mapped[datetime] = _created_at()


Index("idx_logs_level_created", SystemLog.level, SystemLog.created_at.desc())


class ApiRateLimit(Base):
    __tablename__ = "api_rate_limits"

    id: Mapped[uuid.UUID] = _id()
    user_id: Mapped[uuid.UUID | None] = mapped_column(Uuid, ForeignKey("users.id", ondelete="SET NULL"))
    endpoint: Mapped[str] = mapped_column(String(255), nullable=False)
    requests_count: Mapped[int] = mapped_column(Integer, default=0, server_default="0")
    window_start: Mapped[datetime] = mapped_column(UTCDateTime, nullable=False)
    window_duration_seconds: Mapped[int] = mapped_column(Integer, nullable=False)
    limit_exceeded: Mapped[bool] = mapped_column(Boolean, default=False, server_default=sql_false())
    created_at: Mapped[datetime] = _created_at()


class ExchangeStatus(Base):
    __tablename__ = "exchange_status"

    id: Mapped[uuid.UUID] = _id()
    exchange: Mapped[str] = mapped_column(String(50), unique=True, nullable=False)
    status: Mapped[str] = mapped_column(String(20), nullable=False)
    last_ping: Mapped[datetime | None] = mapped_column(UTCDateTime)
    response_time_ms: Mapped[int | None] = mapped_column(Integer)
    error_message: Mapped[str | None] = mapped_column(Text)
    updated_at: Mapped[datetime] = _updated_at()


# --- Beyond the spec: webhook notifications (migration 0005, docs/decisions.md D33) ------------------------


class NotificationWebhook(Base):
    """A user's webhook endpoint: where fills and alerts are POSTed, signed with the user's secret."""

    __tablename__ = "notification_webhooks"

    id: Mapped[uuid.UUID] = _id()
    user_id: Mapped[uuid.UUID] = _owner()
    url: Mapped[str] = mapped_column(String(2048), nullable=False)
    secret_encrypted: Mapped[str] = mapped_column(Text, nullable=False)
    event_types: Mapped[list[str]] = mapped_column(JSONType, nullable=False)
    is_active: Mapped[bool] = mapped_column(Boolean, default=True, server_default=true())
    status: Mapped[str] = mapped_column(String(20), default="active", server_default="active")
    consecutive_failures: Mapped[int] = mapped_column(Integer, default=0, server_default="0")
    last_error: Mapped[str | None] = mapped_column(Text)
    last_failure_at: Mapped[datetime | None] = mapped_column(UTCDateTime)
    last_success_at: Mapped[datetime | None] = mapped_column(UTCDateTime)
    created_at: Mapped[datetime] = _created_at()
    updated_at: Mapped[datetime] = _updated_at()


Index("idx_notification_webhooks_user", NotificationWebhook.user_id)


class NotificationDelivery(Base):
    """One event sent (or being sent) to one webhook: the recent history a user sees."""

    __tablename__ = "notification_deliveries"

    id: Mapped[uuid.UUID] = _id()
    webhook_id: Mapped[uuid.UUID] = mapped_column(
        Uuid, ForeignKey("notification_webhooks.id", ondelete="CASCADE"), nullable=False
    )
    user_id: Mapped[uuid.UUID] = _owner()
    event_id: Mapped[uuid.UUID] = mapped_column(Uuid, nullable=False)
    event_type: Mapped[str] = mapped_column(String(50), nullable=False)
    status: Mapped[str] = mapped_column(String(20), default="pending", server_default="pending")
    attempts: Mapped[int] = mapped_column(Integer, default=0, server_default="0")
    response_status: Mapped[int | None] = mapped_column(Integer)
    error: Mapped[str | None] = mapped_column(Text)
    created_at: Mapped[datetime] = _created_at()
    completed_at: Mapped[datetime | None] = mapped_column(UTCDateTime)


Index(
    "idx_notification_deliveries_webhook_created",
    NotificationDelivery.webhook_id,
    NotificationDelivery.created_at.desc(),
)
