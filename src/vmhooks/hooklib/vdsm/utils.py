"""`vdsm.utils`: the helpers of VDSM's utils module that hooks use."""
from __future__ import annotations

TYPE_CHECKING = False
if TYPE_CHECKING:
    from collections.abc import Hashable, Iterable
    from types import TracebackType


class closing:  # noqa: N801 (VDSM's name)
    """`with closing(obj) as obj:` calls obj.close() at the end. A failing
    close() raises only when the block itself did not raise."""

    def __init__(self, obj: object, log: str = "utils.closing") -> None:
        self.obj = obj
        self.log = log

    def __enter__(self) -> object:
        return self.obj

    def __exit__(self, kind: type[BaseException] | None, value: BaseException | None, tb: TracebackType | None) -> None:
        try:
            self.obj.close()  # type: ignore[attr-defined]
        except Exception:
            if kind is None:
                raise
            import logging

            logging.getLogger(self.log).exception("Error closing %s", self.obj)


def round(n: float, size: int) -> int:  # noqa: A001 (VDSM's name)
    """`n` rounded up to the next multiple of `size`."""
    return int(n + size - 1) // size * size


def unique(iterable: Iterable[Hashable]) -> list[Hashable]:
    """The items once each, in their first order."""
    return list(dict.fromkeys(iterable))


def convertToStr(val: object) -> object:  # noqa: N802 (VDSM's name)
    """Floats with two decimals, ints as digits, anything else as it is."""
    if type(val) is float:
        return "%.2f" % val
    if type(val) is int:
        return "%d" % val
    return val


def picklecopy(obj: object) -> object:
    import pickle

    return pickle.loads(pickle.dumps(obj, pickle.HIGHEST_PROTOCOL))
