"""Structured logs (structlog, JSON by default), and a sink that copies WARNING+ records into `system_logs`.

The sink never runs on the request path: `emit` only appends to a bounded buffer; a background task writes
batches with one multi-row INSERT. If the database is down the batch is dropped and counted, never retried
forever and never raised into a request.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import re
import sys
import uuid
from collections import deque
from datetime import UTC, datetime
from typing import TYPE_CHECKING, Any

import structlog

if TYPE_CHECKING:
    from cival.core.db import Database

_SECRET_KEYS = frozenset({"password", "token", "secret", "api_key", "api_secret", "passphrase", "authorization"})
_RESERVED = frozenset(logging.LogRecord("", 0, "", 0, "", None, None).__dict__) | {"message", "asctime"}


_TOKEN_IN_TEXT = re.compile(r"(token=|Bearer\s+)[^&\s\"']+", re.IGNORECASE)


def _redact(_logger: Any, _name: str, event: dict[str, Any]) -> dict[str, Any]:
    for key, value in event.items():
        if key.lower() in _SECRET_KEYS:
            event[key] = "[redacted]"
        elif isinstance(value, str) and ("token=" in value or "Bearer" in value):
            # uvicorn logs WebSocket paths with `?token=...`: never let a session token reach a log.
            event[key] = _TOKEN_IN_TEXT.sub(r"\1[redacted]", value)
    return event


def configure_logging(level: str = "INFO", *, json: bool = True) -> None:
    """Route structlog and stdlib logging through one JSON (or console) renderer on stderr."""
    shared: list[Any] = [
        structlog.contextvars.merge_contextvars,
        structlog.stdlib.add_log_level,
        structlog.stdlib.add_logger_name,
        structlog.processors.TimeStamper(fmt="iso", utc=True),
        _redact,
    ]
    renderer: Any = structlog.processors.JSONRenderer() if json else structlog.dev.ConsoleRenderer()
    structlog.configure(
        processors=[*shared, structlog.stdlib.ProcessorFormatter.wrap_for_formatter],
        logger_factory=structlog.stdlib.LoggerFactory(),
        wrapper_class=structlog.stdlib.BoundLogger,
        cache_logger_on_first_use=True,
    )
    formatter = structlog.stdlib.ProcessorFormatter(
        foreign_pre_chain=shared,
        processors=[
            structlog.stdlib.ProcessorFormatter.remove_processors_meta,
            structlog.processors.format_exc_info,
            renderer,
        ],
    )
    handler = logging.StreamHandler(sys.stderr)
    handler.setFormatter(formatter)
    handler.set_name("cival-stderr")
    root = logging.getLogger()
    for existing in list(root.handlers):
        if existing.get_name() == "cival-stderr":
            root.removeHandler(existing)
    root.addHandler(handler)
    root.setLevel(level)
    for name in ("uvicorn.access",):
        logging.getLogger(name).setLevel(logging.WARNING)


def get_logger(name: str) -> structlog.stdlib.BoundLogger:
    return structlog.stdlib.get_logger(name)


class DatabaseLogSink(logging.Handler):
    """A logging handler that buffers WARNING+ records and writes them to `system_logs` in batches."""

    def __init__(
        self, database: Database, *, batch_size: int = 200, flush_seconds: float = 1.0, capacity: int = 10_000
    ) -> None:
        super().__init__(level=logging.WARNING)
        self.database = database
        self.batch_size = batch_size
        self.flush_seconds = flush_seconds
        self.dropped = 0
        self.written = 0
        self._buffer: deque[dict[str, Any]] = deque(maxlen=capacity)
        self._wake = asyncio.Event()
        self._task: asyncio.Task[None] | None = None
        self._loop: asyncio.AbstractEventLoop | None = None

    def start(self) -> None:
        self._loop = asyncio.get_running_loop()
        self._task = asyncio.create_task(self._run(), name="system-log-sink")
        logging.getLogger().addHandler(self)

    def emit(self, record: logging.LogRecord) -> None:
        if record.name.startswith(("sqlalchemy", "aiosqlite", "asyncpg")):
            return  # a failing database must not feed its own errors back into the database
        try:
            row = self._row(record)
        except Exception:  # noqa: BLE001 - a log line must never break the caller
            self.dropped += 1
            return
        if len(self._buffer) == self._buffer.maxlen:
            self.dropped += 1
        self._buffer.append(row)
        if len(self._buffer) >= self.batch_size and self._loop is not None:
            self._loop.call_soon_threadsafe(self._wake.set)

    def _row(self, record: logging.LogRecord) -> dict[str, Any]:
        msg = record.msg
        data: dict[str, Any] = {}
        if isinstance(msg, dict):  # a structlog event dict
            event = dict(msg)
            message = str(event.pop("event", ""))
            data = {k: v for k, v in event.items() if k not in ("level", "logger", "timestamp")}
        else:
            message = record.getMessage()
            data = {k: v for k, v in record.__dict__.items() if k not in _RESERVED and not k.startswith("_")}
        if record.exc_info and record.exc_info[0] is not None:
            data["exception"] = logging.Formatter().formatException(record.exc_info)
        message = _TOKEN_IN_TEXT.sub(r"\1[redacted]", message)
        user_id = data.pop("user_id", None)
        data = _redact(None, "", {k: _jsonable(v) for k, v in data.items()})
        return {
            "id": uuid.uuid4(),
            "level": record.levelname,
            "module": record.name[:100],
            "message": message,
            "data": data or None,
            "user_id": _as_uuid(user_id),
            "created_at": datetime.fromtimestamp(record.created, UTC),
        }

    async def _run(self) -> None:
        while True:
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self._wake.wait(), timeout=self.flush_seconds)
            self._wake.clear()
            await self.flush_async()

    async def flush_async(self) -> None:
        """Write everything buffered so far, in batches."""
        from sqlalchemy import insert

        from cival.database.models import SystemLog

        while self._buffer:
            batch = [self._buffer.popleft() for _ in range(min(self.batch_size, len(self._buffer)))]
            try:
                async with self.database.system_session() as session:
                    await session.execute(insert(SystemLog), batch)
                self.written += len(batch)
            except Exception:  # noqa: BLE001 - logging must never take the platform down
                self.dropped += len(batch)

    async def stop(self) -> None:
        logging.getLogger().removeHandler(self)
        if self._task is not None:
            self._task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._task
        await self.flush_async()


def _as_uuid(value: Any) -> uuid.UUID | None:
    if value is None or isinstance(value, uuid.UUID):
        return value
    try:
        return uuid.UUID(str(value))
    except ValueError:
        return None


def _jsonable(value: Any) -> Any:
    if value is None or isinstance(value, bool | int | float | str):
        return value
    if isinstance(value, dict):
        return {str(k): _jsonable(v) for k, v in value.items()}
    if isinstance(value, list | tuple):
        return [_jsonable(v) for v in value]
    return str(value)
