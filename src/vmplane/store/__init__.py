"""Persistent state: SQLAlchemy 2 Core on SQLite (WAL) or PostgreSQL."""

from .db import Store

__all__ = ["Store"]
