"""Client frames: the wire format, and a numbered frame built in two parts is the frame with its seq."""

from __future__ import annotations

import enum
import json
import uuid
from datetime import UTC, date, datetime, timedelta, timezone
from decimal import Decimal
from typing import Any

import pytest
from hypothesis import given
from hypothesis import strategies as st

from cival.services.channels import USER_CHANNELS, dumps, dumps_bytes, frame, frame_around_seq

_VALUES = st.one_of(
    st.none(),
    st.booleans(),
    st.integers(),
    st.text(),
    st.decimals(allow_nan=False, allow_infinity=False),
    st.uuids(),
    st.datetimes(timezones=st.just(UTC)),
)
_DATA = st.dictionaries(st.text(), st.recursive(_VALUES, lambda inner: st.lists(inner, max_size=3), max_leaves=8))


@given(st.sampled_from(sorted(USER_CHANNELS)) | st.text(), _DATA, st.integers(min_value=1, max_value=2**63 - 1))
def test_a_frame_numbered_between_its_parts_is_the_numbered_frame(channel: str, data: dict[str, Any], seq: int) -> None:
    before, after = frame_around_seq(channel, data)
    numbered = before + str(seq).encode() + after
    assert numbered == frame(channel, data, seq)
    assert json.loads(numbered)["seq"] == seq


def test_parts_are_built_anew_for_each_update() -> None:
    # The channel's head is kept; the data never is.
    first = frame_around_seq("orders", {"id": str(uuid.uuid4()), "price": Decimal("1.5")})
    second = frame_around_seq("orders", {"id": "x", "at": datetime(2026, 1, 1, tzinfo=UTC)})
    assert first[0] != second[0]
    assert json.loads(second[0] + b"7" + second[1]) == {
        "type": "update",
        "channel": "orders",
        "data": {"id": "x", "at": "2026-01-01T00:00:00Z"},
        "seq": 7,
    }


class _Side(enum.Enum):
    BUY = "buy"
    SELL = "sell"


class _Level(enum.IntEnum):
    LOW = 1


def _reference(value: Any) -> Any:
    """The wire format as documented: Decimal and UUID as text, datetimes ISO 8601 with UTC as Z, enums' values."""
    if isinstance(value, Decimal | uuid.UUID):
        return str(value)
    if isinstance(value, datetime):
        return value.isoformat().replace("+00:00", "Z")
    if isinstance(value, date):
        return value.isoformat()
    if isinstance(value, enum.Enum):
        return value.value
    raise TypeError(type(value).__name__)


_REFERENCE = json.JSONEncoder(separators=(",", ":"), ensure_ascii=False, default=_reference)
_OFFSETS = st.sampled_from(
    [UTC, timezone(timedelta(0)), timezone(timedelta(hours=5, minutes=30)), timezone(-timedelta(hours=8))]
)
_WIRE_VALUES = st.one_of(
    _VALUES,
    st.integers(min_value=-(2**70), max_value=2**70),  # past 64 bits too
    st.datetimes(timezones=_OFFSETS),
    st.datetimes(),  # naive
    st.dates(),
    st.sampled_from([*_Side, *_Level]),
)
_WIRE = st.dictionaries(
    st.text(),
    st.recursive(
        _WIRE_VALUES,
        lambda inner: st.lists(inner, max_size=3) | st.dictionaries(st.text(), inner, max_size=3),
        max_leaves=10,
    ),
)


@given(_WIRE)
def test_frames_are_written_in_the_documented_wire_format(data: dict[str, Any]) -> None:
    # Byte for byte what the standard library writes with the documented conversions: clients see one format.
    assert dumps_bytes(data) == _REFERENCE.encode(data).encode()
    assert dumps(data) == _REFERENCE.encode(data)


def test_what_has_no_wire_format_is_refused() -> None:
    with pytest.raises(TypeError, match="object is not JSON serializable"):
        dumps({"what": object()})
