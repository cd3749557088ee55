"""The host agent: `Agent` (facade.py) is its one entry point; the modules
beside it each own one concern (lifecycle, devices, migration, stats,
events and recovery, views), sharing an `AgentContext`."""
from __future__ import annotations

from vmhooks.agent.devices import DEVICE_OPERATIONS
from vmhooks.agent.facade import Agent

__all__ = ["DEVICE_OPERATIONS", "Agent"]
