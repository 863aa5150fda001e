"""Exception family. The CLI turns any `CongenerError` into one line and a nonzero exit."""


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
