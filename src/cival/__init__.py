"""Cival: a multi-tenant crypto trading platform backend."""

__version__ = "0.1.0"
