"""The host agent: `Agent` is its one entry point (see core.py)."""
from __future__ import annotations

from vmhooks.agent.core import DEVICE_OPERATIONS, Agent

__all__ = ["DEVICE_OPERATIONS", "Agent"]
