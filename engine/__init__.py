"""Troupe: an event-driven workflow engine that runs Maestro studies on local processes,
Slurm and Flux, and publishes every state change on NATS."""

from __future__ import annotations

__all__ = ["__version__"]

__version__ = "0.1.0"
