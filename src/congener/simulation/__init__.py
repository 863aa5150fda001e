"""Molecular dynamics: batched integrators, the runner with stability checks and checkpoints,
and the samplers that distillation draws configurations with."""
