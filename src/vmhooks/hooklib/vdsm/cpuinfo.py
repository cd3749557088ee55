"""`vdsm.cpuinfo`: the host CPU as /proc/cpuinfo describes it (read once
per process, on first use)."""
from __future__ import annotations

from collections import namedtuple

from vdsm.common import cpuarch

PATH = "/proc/cpuinfo"
CpuInfo = namedtuple("CpuInfo", "flags, frequency, model, ppcmodel, platform, machine")
UNAVAILABLE = "unavailable"

# The first key of each line -> the field it fills, for every architecture
# VDSM knows (x86_64 flags / cpu MHz / model name, aarch64 Features /
# BogoMIPS / CPU part, s390 features / cpu MHz dynamic, POWER cpu / clock...).
_KEYS = {
    "flags": "flags", "Features": "flags", "features": "flags",
    "cpu MHz": "frequency", "BogoMIPS": "frequency", "cpu MHz dynamic": "frequency",
    "model name": "model", "CPU part": "model", "cpu": "model",
    "model": "ppcmodel", "platform": "platform", "machine": "machine",
}  # fmt: skip
_cached: CpuInfo | None = None


def parse(text: str, arch: str) -> CpuInfo:
    """The fields of the first processor described (a later line of the
    same key wins until all six are known, as on VDSM)."""
    import re

    fields: dict[str, object] = {}
    if cpuarch.is_ppc(arch):
        fields["flags"] = ["powernv"]
    else:  # only POWER reports these
        fields.update(platform=UNAVAILABLE, machine=UNAVAILABLE, ppcmodel=UNAVAILABLE)
    for line in text.splitlines():
        key, sep, value = line.partition(":")
        key, value = key.strip(), value.strip()
        if not sep or not key:
            continue
        field = _KEYS.get(key)
        if field == "flags":
            fields["flags"] = value.split()
        elif field is not None:
            fields[field] = value
        elif key == "clock":  # POWER: "3425.000000MHz"
            fields["frequency"] = value[:-3]
        elif re.match(r"processor \d+", key):  # s390: "... machine = 8561"
            match = re.search(r"\bmachine\s*=\s*(\w+)", value)
            if match:
                fields["model"] = match.group(1)
        if len(fields) == 6:
            break
    fields.setdefault("frequency", UNAVAILABLE)  # older s390 machines report none
    for name in CpuInfo._fields:
        fields.setdefault(name, [] if name == "flags" else UNAVAILABLE)
    return CpuInfo(**fields)  # type: ignore[arg-type]


def _cpuinfo() -> CpuInfo:
    global _cached
    if _cached is None:
        with open(PATH) as handle:
            _cached = parse(handle.read(), cpuarch.real())
    return _cached


def flags() -> list[str]:
    return _cpuinfo().flags


def frequency() -> str:
    return _cpuinfo().frequency


def model() -> str:
    return _cpuinfo().model


def ppcmodel() -> str:
    return _cpuinfo().ppcmodel


def platform() -> str:
    return _cpuinfo().platform


def machine() -> str:
    return _cpuinfo().machine
