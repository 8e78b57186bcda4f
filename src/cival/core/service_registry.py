"""Builds, owns and closes every long-lived service, in dependency order (the spec's dependency injection).

The app's lifespan calls `start()` and `close()`; routers reach services through `api/deps.py`. Later
capabilities add their service here, built after what it depends on and closed before it.
"""

from __future__ import annotations

import functools
from collections.abc import Callable
from datetime import timedelta
from decimal import Decimal

from cival import __version__
from cival.config import Settings
from cival.connectors.paper import PaperExchange
from cival.core.cache import Cache, create_cache
from cival.core.db import Database
from cival.core.exceptions import ServiceUnavailable, StartupError
from cival.core.logging import DatabaseLogSink, get_logger
from cival.core.metrics import Metrics
from cival.core.security import CredentialCipher, KeyRing, KeyRingError, Passwords
from cival.database import migrate
from cival.domain.portfolio import USD_STABLECOINS
from cival.services.account_service import AccountService
from cival.services.auth_service import AuthService
from cival.services.credential_service import CredentialService
from cival.services.market_data_service import MarketDataService
from cival.services.notification_service import NotificationService
from cival.services.order_management import OrderManagementService
from cival.services.order_routing import OrderRoute
from cival.services.portfolio_tracker import PortfolioTracker
from cival.services.rate_limiter import RateLimiter
from cival.services.risk_limits import RiskLimitService
from cival.services.risk_manager import RiskGate
from cival.services.websocket_manager import WebSocketManager, make_resolver, publish_public

log = get_logger(__name__)


async def ensure_database(settings: Settings) -> None:
    """Reachable and current: the embedded SQLite upgrades itself, PostgreSQL must be migrated first."""
    await migrate.ensure_current(settings)


def load_keyring(settings: Settings) -> tuple[KeyRing, Callable[[], KeyRing] | None]:
    """The credential key ring: from CIVAL_SECRET_KEY, or a key file (created on the embedded default's first run).

    A file-based ring can be reloaded, so workers pick up a key added by `cival keys rotate` without a restart.
    """
    try:
        if settings.secret_key:
            return KeyRing.parse(settings.secret_key), None
        path = settings.key_file
        if settings.env == "production" and not path.exists():
            raise StartupError(
                f"no credential key: set CIVAL_SECRET_KEY, or CIVAL_SECRET_KEY_FILE to an existing key file ({path} "
                "does not exist); production never generates one silently"
            )
        if settings.is_sqlite or path.exists() or settings.env != "production":
            path.parent.mkdir(parents=True, exist_ok=True)
        return KeyRing.load_or_create(path), lambda: KeyRing.load_file(path)
    except KeyRingError as exc:
        raise StartupError(f"CIVAL_SECRET_KEY / key file: {exc}") from exc


class ServiceRegistry:
    """Every service of one running Cival, built by `start()`."""

    database: Database
    cache: Cache
    log_sink: DatabaseLogSink
    rate_limiter: RateLimiter
    auth: AuthService
    credentials: CredentialService
    accounts: AccountService
    market_data: MarketDataService
    websockets: WebSocketManager
    paper: PaperExchange
    orders: OrderManagementService
    notifications: NotificationService
    portfolio: PortfolioTracker
    risk: RiskGate
    risk_limits: RiskLimitService

    def __init__(self, settings: Settings) -> None:
        self.settings = settings
        self.version = __version__
        self.metrics = Metrics()
        self._started: list[str] = []

    async def start(self) -> None:
        s = self.settings
        await ensure_database(s)
        self.database = Database(s)
        self._started.append("database")

        self.cache = create_cache(s.redis_url, prefix=s.redis_prefix)
        self._started.append("cache")
        try:
            await self.cache.ping()
        except ServiceUnavailable as exc:
            raise StartupError(exc.detail) from exc

        self.log_sink = DatabaseLogSink(
            self.database, batch_size=s.log_db_batch_size, flush_seconds=s.log_db_flush_seconds
        )
        self.log_sink.start()
        self._started.append("log_sink")

        keyring, reload = load_keyring(s)
        self.passwords = Passwords(
            time_cost=s.password_time_cost, memory_cost=s.password_memory_kib, parallelism=s.password_parallelism
        )
        self.rate_limiter = RateLimiter(self.cache, self.database)
        self.auth = AuthService(self.database, self.cache, self.passwords, timedelta(hours=s.session_ttl_hours))
        self.credentials = CredentialService(self.database, CredentialCipher(keyring, reload=reload))
        self.accounts = AccountService(self.database, self.credentials, s.paper_starting_balances)

        self.market_data = MarketDataService(self.database, self.cache, s)
        self.market_data.feed.publish = functools.partial(publish_public, self.cache)

        # The paper exchange matches on the leader's market steps; its books are rebuilt from the database first.
        market = self.market_data
        self.paper = PaperExchange(
            market.instruments.values(), book_source=lambda symbol: market.latest_book("paper", symbol)
        )
        self.risk = RiskGate(self.database, self.cache, market.instruments, self.usd_prices, s.paper_starting_balances)
        # The one publisher of user events: numbered and kept for resume, live on every worker, fills and alerts to
        # the user's webhooks (in the background).
        self.notifications = NotificationService(self.database, self.cache, self.credentials.cipher, env=s.env)
        await self.notifications.start()
        self._started.append("notifications")
        self.orders = OrderManagementService(
            self.database,
            self.cache,
            market.instrument,
            self.paper,
            self.risk,
            self.usd_prices,
            s.paper_starting_balances,
            OrderRoute(self.cache, market.instance_id, s.order_route_timeout_seconds),
            self.notifications.publish_many,
            snapshot_seconds=s.portfolio_snapshot_seconds,
        )
        # The gate cancels through the order service and publishes alerts it raises outside the order path.
        self.risk.cancel_all = self.orders.cancel_all
        self.risk.publish = self.notifications.publish_many
        self.risk_limits = RiskLimitService(self.risk)
        self.portfolio = PortfolioTracker(self.database, self.usd_prices, s.paper_starting_balances)
        self._started.append("orders")
        # Whichever worker leads market data works paper orders: it rebuilds the books from the database first.
        market.takeover_listeners.append(self.orders.taking_lead)
        market.leadership_listeners.append(self.orders.on_leadership)
        market.feed.listeners.append(self.paper.on_market)
        market.feed.listeners.append(self.risk.on_market)  # automatic kill switch trips on daily loss

        await self.market_data.start()
        self._started.append("market_data")

        self.websockets = WebSocketManager(
            self.cache,
            self.auth.authenticate,
            make_resolver(self.market_data.validate_public_channel),
            stream=self.notifications.stream,
        )
        self._started.append("websockets")

    async def usd_prices(self) -> dict[str, Decimal]:
        """USD price per asset from the latest paper tickers (quoted in USDT, valued at 1 USD)."""
        prices: dict[str, Decimal] = {}
        for ticker in await self.market_data.tickers("paper"):
            base, _, quote = ticker.symbol.partition("/")
            if quote in USD_STABLECOINS and ticker.price is not None:
                prices[base] = ticker.price
        return prices

    async def close(self) -> None:
        """Close what was started, newest first; one failing close does not stop the others."""
        for name in reversed(self._started):
            try:
                if name == "websockets":
                    await self.websockets.close()
                elif name == "market_data":
                    await self.market_data.stop()
                elif name == "notifications":
                    await self.notifications.close()
                elif name == "orders":
                    await self.orders.close()
                elif name == "log_sink":
                    await self.log_sink.stop()
                elif name == "cache":
                    await self.cache.close()
                elif name == "database":
                    await self.database.close()
            except Exception:
                log.exception("service failed to close", service=name)
        self._started.clear()
