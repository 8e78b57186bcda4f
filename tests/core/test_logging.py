"""WARNING+ records reach `system_logs` in batches, off the request path, with secrets redacted."""

from __future__ import annotations

import logging
import uuid

from sqlalchemy import select

from cival.core.db import Database
from cival.core.logging import DatabaseLogSink, get_logger
from cival.core.service_registry import ServiceRegistry
from cival.database.models import SystemLog


async def test_warnings_are_written_in_a_batch(clean_db: Database, registry: ServiceRegistry) -> None:
    marker = uuid.uuid4().hex
    log = get_logger("cival.test")
    log.info("not stored", marker=marker)
    log.warning("stored warning", marker=marker, password="hunter2")
    logging.getLogger("cival.test.stdlib").error("stored error %s", marker)
    await registry.log_sink.flush_async()
    async with clean_db.system_session() as session:
        rows = (await session.execute(select(SystemLog).order_by(SystemLog.created_at))).scalars().all()
    mine = [r for r in rows if marker in (r.message + str(r.data))]
    assert [(r.level, r.module) for r in mine] == [("WARNING", "cival.test"), ("ERROR", "cival.test.stdlib")]
    assert mine[0].data is not None
    assert mine[0].data["password"] == "[redacted]"
    assert "hunter2" not in str(mine[0].data)


async def test_a_broken_database_never_raises_into_the_caller(settings: object) -> None:
    class Broken:
        def system_session(self) -> object:
            raise ConnectionError("database is down")

    sink = DatabaseLogSink(Broken(), batch_size=2)  # type: ignore[arg-type]
    record = logging.LogRecord("cival.x", logging.ERROR, __file__, 1, "boom", None, None)
    for _ in range(3):
        sink.emit(record)
    await sink.flush_async()
    assert sink.dropped == 3
    assert sink.written == 0


async def test_user_id_is_carried_into_its_column(clean_db: Database, registry: ServiceRegistry) -> None:
    from cival.database.models import User

    user = User(email=f"{uuid.uuid4().hex}@example.com")
    async with clean_db.system_session() as session:
        session.add(user)
    get_logger("cival.audit").warning("login failed", user_id=str(user.id))
    await registry.log_sink.flush_async()
    async with clean_db.system_session() as session:
        stored = (await session.execute(select(SystemLog).where(SystemLog.user_id == user.id))).scalars().all()
    assert [s.message for s in stored] == ["login failed"]


async def test_session_tokens_in_log_text_are_redacted(clean_db: Database, registry: ServiceRegistry) -> None:
    """uvicorn logs WebSocket paths with their `?token=` query: the token must reach neither stderr nor the DB."""
    token = "cvl_" + uuid.uuid4().hex
    record = logging.LogRecord(
        "uvicorn.error",
        logging.WARNING,
        __file__,
        1,
        '%s - "WebSocket /api/v1/ws?token=%s" 403',
        ("127.0.0.1", token),
        None,
    )
    stderr = next(h for h in logging.getLogger().handlers if h.get_name() == "cival-stderr")
    rendered = stderr.format(record)
    assert "token=[redacted]" in rendered
    assert token not in rendered
    logging.getLogger("uvicorn.error").handle(record)
    get_logger("cival.test").warning("header was Bearer " + token)
    await registry.log_sink.flush_async()
    async with clean_db.system_session() as session:
        rows = (await session.execute(select(SystemLog))).scalars().all()
    texts = [r.message + str(r.data) for r in rows]
    assert any("token=[redacted]" in t for t in texts)
    assert any("Bearer [redacted]" in t for t in texts)
    assert all(token not in t for t in texts)
