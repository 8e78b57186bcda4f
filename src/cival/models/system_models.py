"""Schemas of the system endpoints."""

from __future__ import annotations

from typing import Literal

from pydantic import BaseModel


class ComponentHealth(BaseModel):
    status: Literal["ok", "error"]
    backend: str
    latency_ms: float | None = None
    detail: str | None = None


class HealthOut(BaseModel):
    status: Literal["ok", "degraded"]
    version: str
    database: ComponentHealth
    cache: ComponentHealth


class ErrorOut(BaseModel):
    """The shape of every error response."""

    error: str
    detail: str


class FieldError(BaseModel):
    field: str
    message: str
    type: str


class ValidationErrorOut(ErrorOut):
    """A 422: which fields to fix and why."""

    errors: list[FieldError] = []
