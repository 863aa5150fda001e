"""congener: transfer learning of interatomic potentials between congener elements."""

from congener.errors import (
    CheckpointError,
    ConfigError,
    CongenerError,
    DataError,
    SimulationUnstable,
)

__version__ = "0.1.0"

__all__ = [
    "CheckpointError",
    "ConfigError",
    "CongenerError",
    "DataError",
    "SimulationUnstable",
    "__version__",
]
