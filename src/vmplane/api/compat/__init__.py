"""Compatibility faces: one package per foreign API, each a thin translation onto the core
services (see api/faces.py for how they are mounted and served)."""
