"""CLI commands: model."""

from congener.cli import cli  # noqa: F401
