"""`vdsm.common.cpuarch`: the host's CPU architecture (real) and the one
VDSM acts as (effective: `fake_kvm_architecture` when `fake_kvm_support`
is on in vdsm.conf)."""
from __future__ import annotations

import os

X86_64 = "x86_64"
PPC64 = "ppc64"
PPC64LE = "ppc64le"
AARCH64 = "aarch64"
S390X = "s390x"

SUPPORTED_ARCHITECTURES = (X86_64, PPC64, PPC64LE, AARCH64, S390X)

PAGE_SIZE_BYTES = os.sysconf("SC_PAGESIZE")


class UnsupportedArchitecture(Exception):
    def __init__(self, target_arch: str) -> None:
        super().__init__(target_arch)
        self._target_arch = target_arch

    def __str__(self) -> str:
        return f"{self._target_arch} is not supported architecture."


def real() -> str:
    """The host's architecture; UnsupportedArchitecture when VDSM knows none such."""
    return _supported(os.uname().machine)


def effective() -> str:
    from vdsm.common.config import config

    if config.getboolean("vars", "fake_kvm_support"):
        return _supported(config.get("vars", "fake_kvm_architecture"))
    return real()


def is_ppc(arch: str) -> bool:
    return arch in (PPC64, PPC64LE)


def is_x86(arch: str) -> bool:
    return arch == X86_64


def is_arm(arch: str) -> bool:
    return arch == AARCH64


def is_s390(arch: str) -> bool:
    return arch == S390X


def _supported(arch: str) -> str:
    if arch not in SUPPORTED_ARCHITECTURES:
        raise UnsupportedArchitecture(arch)
    return arch
