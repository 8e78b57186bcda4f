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
