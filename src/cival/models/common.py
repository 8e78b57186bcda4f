"""Shared schema building blocks."""

from __future__ import annotations

from decimal import Decimal
from typing import Annotated

from pydantic import BaseModel, BeforeValidator, ConfigDict, PlainSerializer, field_validator

_SCALE = Decimal("0.00000001")

Amount = Annotated[
    Decimal,
    PlainSerializer(lambda value: format(value.quantize(_SCALE), "f"), return_type=str, when_used="json"),
]
"""A money or quantity value in a response: a JSON string with the schema's 8 decimal places, never a float."""


def _refuse_float(value: object) -> object:
    # A JSON number with a fraction is parsed as a binary float before it reaches us, and 0.1 is not 0.1 there:
    # money must arrive as a string ("0.1") or an integer, never through a float.
    if isinstance(value, float):
        raise ValueError(f'send decimal amounts as JSON strings to keep them exact, e.g. "{value!r}"')
    return value


DecimalIn = Annotated[Decimal, BeforeValidator(_refuse_float)]
"""A money or quantity value in a request: a JSON string (`"0.001"`) or integer, never a float."""


class StrictInput(BaseModel):
    """Base of every request body: unknown fields are refused (so owner, role or status cannot be smuggled in)."""

    model_config = ConfigDict(extra="forbid")

    @field_validator("*", mode="after")
    @classmethod
    def _no_nul(cls, value: object) -> object:
        # PostgreSQL text cannot hold NUL; refuse it up front on every backend instead of failing at the database.
        if isinstance(value, str) and "\x00" in value:
            raise ValueError("must not contain a NUL character")
        return value


class Output(BaseModel):
    """Base of every response body: built from ORM objects."""

    model_config = ConfigDict(from_attributes=True)
