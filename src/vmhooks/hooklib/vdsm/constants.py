"""`vdsm.constants`: the same as `vdsm.common.constants` (VDSM keeps both
names). Every name is looked up there when used, so nothing is resolved
at import."""
from __future__ import annotations

from vdsm.common import constants as _common

__all__ = _common.__all__


def __getattr__(name: str) -> object:
    return getattr(_common, name)
