"""Persistent state: SQLAlchemy 2 Core on SQLite (WAL) or PostgreSQL."""

from .db import Store, StoreUnavailable

__all__ = ["Store", "StoreUnavailable"]
