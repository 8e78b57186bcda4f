"""One typed Settings object, read from `CIVAL_*` environment variables and validated at start-up."""

from __future__ import annotations

from decimal import Decimal
from functools import lru_cache
from pathlib import Path
from typing import Annotated, Literal

from pydantic import AfterValidator, BaseModel, ConfigDict, Field, ValidationError, field_validator
from pydantic_settings import BaseSettings, SettingsConfigDict

ENV_PREFIX = "CIVAL_"


def _check_rate_limit(value: str) -> str:
    count, _, seconds = value.partition("/")
    if not (count.isdigit() and seconds.isdigit() and int(count) > 0 and int(seconds) > 0):
        raise ValueError("expected `N/SECONDS`, e.g. 10/60")
    return value


RateLimit = Annotated[str, AfterValidator(_check_rate_limit)]
"""`N/SECONDS`: at most N requests per fixed window of SECONDS."""


def parse_rate_limit(value: str) -> tuple[int, int]:
    count, _, seconds = value.partition("/")
    return int(count), int(seconds)


class PaperPair(BaseModel):
    """One pair of the paper exchange and its simulated market (`CIVAL_PAPER_PAIRS` is a JSON list of these)."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    @field_validator(
        "tick_size", "step_size", "min_order_size", "max_order_size", "min_notional", "start_price", mode="before"
    )
    @classmethod
    def _no_float(cls, value: object) -> object:
        if isinstance(value, float):
            raise ValueError(f'write decimals as JSON strings to keep them exact, e.g. "{value!r}"')
        return value

    symbol: str
    tick_size: Decimal
    step_size: Decimal
    min_order_size: Decimal
    max_order_size: Decimal
    min_notional: Decimal = Decimal(5)
    start_price: Decimal
    volatility: float = Field(default=0.6, ge=0, le=10, description="Annualised volatility of the random walk.")


class SettingsError(Exception):
    """A setting is missing or malformed; the message names the variable and what it expects."""


class Settings(BaseSettings):
    """Every `CIVAL_` variable. README.md lists them; keep the two in step."""

    model_config = SettingsConfigDict(env_prefix=ENV_PREFIX, extra="ignore", frozen=True)

    env: Literal["development", "production", "test"] = "development"
    data_dir: Path = Field(default=Path("var"), description="Where the embedded database and key file live.")
    database_url: str = Field(default="", description="SQLAlchemy URL; empty means SQLite in data_dir.")
    database_pool_size: int = Field(default=10, ge=1, le=200)
    redis_url: str = Field(default="", description="redis:// URL; empty means in-process cache and pub/sub.")
    redis_prefix: str = Field(
        default="cival:",
        min_length=1,
        max_length=64,
        description="Prefix of every Redis key and channel: deployments sharing one Redis use different prefixes.",
    )
    host: str = "127.0.0.1"
    port: int = Field(default=8000, ge=1, le=65535)
    log_level: Literal["DEBUG", "INFO", "WARNING", "ERROR", "CRITICAL"] = "INFO"
    log_json: bool = True
    log_db_batch_size: int = Field(default=200, ge=1, le=10_000)
    log_db_flush_seconds: float = Field(default=1.0, gt=0, le=60)

    secret_key: str = Field(
        default="", repr=False, description="Credential master key(s) `id:base64,...`; empty: a key file."
    )
    secret_key_file: Path | None = Field(
        default=None, description="Key ring file; default `<data_dir>/secret.key`, created on first run."
    )
    session_ttl_hours: float = Field(default=24.0, gt=0, le=24 * 90)
    password_time_cost: int = Field(default=2, ge=2, le=20)
    password_memory_kib: int = Field(default=19456, ge=19456, le=4 * 1024 * 1024)
    password_parallelism: int = Field(default=1, ge=1, le=16)
    paper_starting_balances: dict[str, Decimal] = Field(
        default_factory=lambda: {"USDT": Decimal("10000")},
        description='Balances a new paper account is funded with, JSON: {"USDT": "10000"}.',
    )
    rate_limit_login: RateLimit = Field(default="10/60", description="Login attempts per window, `N/SECONDS`.")
    rate_limit_register: RateLimit = Field(default="5/3600", description="Registrations per client address.")

    market_data_enabled: bool = Field(
        default=True, description="Run the market data sources (one worker leads; the others read its data)."
    )
    market_seed: int = Field(default=42, description="Seed of the simulated market: same seed, same prices.")
    market_step_seconds: float = Field(default=1.0, gt=0, le=60, description="Simulated market step.")
    portfolio_snapshot_seconds: float = Field(
        default=1.0,
        ge=0,
        le=3600,
        description="Today's portfolio snapshot is rewritten at most this often per user (0: after every fill).",
    )
    order_route_timeout_seconds: float = Field(
        default=5.0,
        gt=0,
        le=60,
        description="How long a worker waits for the market-data leader to work a paper order before it is `unknown`.",
    )
    ticker_persist_seconds: float = Field(default=5.0, gt=0, le=3600)
    book_snapshot_seconds: float = Field(default=60.0, gt=0, le=86400)
    book_retention_hours: float = Field(default=24.0, gt=0, le=24 * 365)
    paper_pairs: list[PaperPair] | None = Field(
        default=None,
        min_length=1,
        description="The paper exchange's pairs, JSON; default BTC/USDT, ETH/USDT, SOL/USDT.",
    )

    replay_source: str | None = Field(
        default=None,
        pattern=r"^[a-z0-9_-]{1,50}:[A-Z0-9]+/[A-Z0-9]+:(1m|5m|15m|1h|4h|1d)$",
        description="Replay stored candles `exchange:BASE/QUOTE:timeframe` onto the paper pair of the same symbol.",
    )

    @field_validator("paper_starting_balances", mode="before")
    @classmethod
    def _no_float_balances(cls, value: object) -> object:
        if isinstance(value, dict) and any(isinstance(v, float) for v in value.values()):
            raise ValueError('write amounts as JSON strings to keep them exact, e.g. {"USDT": "10000.5"}')
        return value

    @field_validator("paper_starting_balances")
    @classmethod
    def _check_balances(cls, value: dict[str, Decimal]) -> dict[str, Decimal]:
        for asset, amount in value.items():
            if not asset.isalnum() or not asset.isupper() or amount < 0:
                raise ValueError("expected uppercase asset names and non-negative amounts")
        return value

    @field_validator("log_level", mode="before")
    @classmethod
    def _upper_level(cls, value: object) -> object:
        return value.upper() if isinstance(value, str) else value

    @field_validator("database_url")
    @classmethod
    def _check_database_url(cls, value: str) -> str:
        if value and not value.startswith(("sqlite", "postgresql", "postgres://")):
            raise ValueError("expected a sqlite:/// or postgresql:// URL")
        return value

    @field_validator("redis_url")
    @classmethod
    def _check_redis_url(cls, value: str) -> str:
        if value and not value.startswith(("redis://", "rediss://", "unix://")):
            raise ValueError("expected a redis:// or rediss:// URL")
        return value

    @property
    def effective_database_url(self) -> str:
        """The async SQLAlchemy URL: the configured one with its async driver, or the embedded SQLite file."""
        url = self.database_url
        if not url:
            return f"sqlite+aiosqlite:///{self.data_dir / 'cival.sqlite3'}"
        for prefix in ("postgres://", "postgresql://", "postgresql+psycopg://", "postgresql+psycopg2://"):
            if url.startswith(prefix):
                return "postgresql+asyncpg://" + url[len(prefix) :]
        if url.startswith("sqlite://") and not url.startswith("sqlite+aiosqlite://"):
            return "sqlite+aiosqlite://" + url[len("sqlite://") :]
        return url

    @property
    def key_file(self) -> Path:
        return self.secret_key_file or self.data_dir / "secret.key"

    @property
    def is_sqlite(self) -> bool:
        return self.effective_database_url.startswith("sqlite")


def load_settings() -> Settings:
    """Build Settings, turning a validation failure into one line per bad variable."""
    try:
        return Settings()
    except ValidationError as exc:
        lines = []
        for err in exc.errors():
            name = ENV_PREFIX + "_".join(str(p) for p in err["loc"]).upper()
            lines.append(f"{name}: {err['msg']} (got {err.get('input')!r})")
        raise SettingsError("; ".join(lines)) from None


@lru_cache(maxsize=1)
def get_settings() -> Settings:
    return load_settings()
