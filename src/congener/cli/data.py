"""CLI commands: data."""

from congener.cli import cli  # noqa: F401
