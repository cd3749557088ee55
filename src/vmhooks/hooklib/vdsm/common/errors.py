"""`vdsm.common.errors`: the base of VDSM's internal errors, whose message
is the class's `msg` formatted with the error itself as `self`."""
from __future__ import annotations


class Base(Exception):
    msg = "Base class for vdsm errors"

    def __str__(self) -> str:
        return self.msg.format(self=self)
