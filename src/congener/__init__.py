"""congener: transfer learning of interatomic potentials between congener elements."""

from congener.errors import (
    CheckpointError,
    CongenerError,
    ConfigError,
    DataError,
    SimulationUnstable,
)

__version__ = "0.1.0"

__all__ = [
    "CheckpointError",
    "CongenerError",
    "ConfigError",
    "DataError",
    "SimulationUnstable",
    "__version__",
]
