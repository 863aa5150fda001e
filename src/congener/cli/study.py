"""CLI commands: study."""

from congener.cli import cli  # noqa: F401
