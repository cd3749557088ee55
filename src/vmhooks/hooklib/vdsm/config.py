"""`vdsm.config`: the same as `vdsm.common.config` (VDSM keeps both names)."""
from __future__ import annotations

from vdsm.common import config as _common
from vdsm.common.config import DEFAULTS, config_files, load, set_defaults  # noqa: F401


def __getattr__(name: str) -> object:
    if name == "config":
        return _common.config  # loaded on first use
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
