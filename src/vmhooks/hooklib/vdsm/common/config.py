"""`vdsm.common.config`: VDSM's configuration as a ConfigParser.

VDSM's defaults for the keys hooks (and these modules) read, overlaid by
`/etc/vdsm/vdsm.conf`, then every `*.conf` of the `vdsm.conf.d/` drop-in
directories under /usr/lib, /run and /etc, in order of their file names, as
VDSM reads them. `VMHOOKS_SYSCONF_DIR` replaces /etc (the agent's setting,
for tests and chroots).

`config` is read on first use, in the hook's process, not at import: a
process that imports this module ahead of the hook never sees stale files.
"""
from __future__ import annotations

import os

from vdsm._compat import agent_setting

TYPE_CHECKING = False
if TYPE_CHECKING:
    import configparser

# VDSM's defaults for the keys that hooks read. Other sections exist (with
# no keys) so that reading an unknown key says "no option", as on VDSM.
DEFAULTS = {
    "vars": {
        "core_dump_enable": "true",
        "host_mem_reserve": "256",
        "guest_ram_overhead": "65",
        "extra_mem_reserve": "65",
        "fake_nics": "dummy_*,veth_*",
        "ethtool_opts": "",
        "hidden_nics": "w*,usb*",
        "hidden_bonds": "",
        "hidden_vlans": "",
        "ssl": "true",
        "cpu_affinity": "auto",
        "fake_kvm_support": "false",
        "fake_kvm_architecture": "x86_64",
        "fake_kvm_memory": "0",
        "fake_vmstats_enable": "false",
        "fake_sriov_enable": "false",
    },
    "addresses": {"management_port": "54321", "management_ip": "::"},
}
SECTIONS = (
    "vars", "rpc", "mom", "irs", "iscsi", "spm", "mailbox", "thinp", "multipath", "lvm", "sanlock",
    "jobs", "addresses", "sampling", "metrics", "devel", "health", "gluster", "performance", "v2v",
    "guest_agent",
)  # fmt: skip
DROPIN_BASES = ("/usr/lib", "/run")


def sysconf_dir() -> str:
    return agent_setting("VMHOOKS_SYSCONF_DIR", "/etc")


def set_defaults(cfg: configparser.ConfigParser) -> None:
    for section in SECTIONS:
        if not cfg.has_section(section):
            cfg.add_section(section)
        for key, value in DEFAULTS.get(section, {}).items():
            cfg.set(section, key, value)


def config_files(name: str = "vdsm") -> list[str]:
    """The files read, in order: the main file, then the drop-ins sorted by name."""
    import glob

    main = os.path.join(sysconf_dir(), name, name + ".conf")
    dropins = []
    for base in (*DROPIN_BASES, sysconf_dir()):
        dropins.extend(glob.glob(os.path.join(base, name, name + ".conf.d", "*.conf")))
    dropins.sort(key=os.path.basename)
    return [main, *dropins]


def load(name: str = "vdsm") -> configparser.ConfigParser:
    import configparser

    cfg = configparser.ConfigParser()
    set_defaults(cfg)
    cfg.read(config_files(name))  # missing files are skipped, as on VDSM
    return cfg


def __getattr__(name: str) -> object:
    if name == "config":
        value = globals()["config"] = load("vdsm")
        return value
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
