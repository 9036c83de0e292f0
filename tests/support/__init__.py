"""Helpers and stand-ins shared by several test modules: test modules import from here, never
from each other (shared fixtures are in tests/conftest.py)."""
