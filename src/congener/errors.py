"""Exception family. The CLI turns any `CongenerError` into one line and a nonzero exit."""


def first_line(exc: BaseException, limit: int = 200) -> str:
    """The first non-empty line of an exception's message (its type name when it has none)."""
    lines = [line for line in str(exc).splitlines() if line.strip()]
    return (lines[0] if lines else type(exc).__name__)[:limit]


class CongenerError(Exception):
    """Base class of every error congener raises on purpose."""


class DataError(CongenerError):
    """Missing, malformed or inconsistent input data (files, structures, elements)."""


class ConfigError(CongenerError):
    """A configuration value that is unknown, of the wrong type or out of range."""


class CheckpointError(CongenerError):
    """A checkpoint that cannot be read or does not fit what it is used for."""


class SimulationUnstable(CongenerError):
    """A simulation or training run produced NaN/Inf or unphysical configurations."""


class CongenerWarning(UserWarning):
    """Something a user should know that does not stop the work (the CLI prints one line)."""
