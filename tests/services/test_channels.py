"""Client frames: a numbered frame built in two parts is the frame with its seq, whatever the channel and data."""

from __future__ import annotations

import json
import uuid
from datetime import UTC, datetime
from decimal import Decimal
from typing import Any

from hypothesis import given
from hypothesis import strategies as st

from cival.services.channels import USER_CHANNELS, frame, frame_around_seq

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
