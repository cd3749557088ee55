"""The `vdsm` compatibility package (hooklib/vdsm/), used as upstream VDSM
hooks use it: each test writes a hook with the same imports and calls as an
upstream hook and runs it through the runner, in a real hook process."""
from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import textwrap
import uuid
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest

from agentproc import AgentProcess, domain_xml
from vmhooks.environment import HOOKLIB_DIR, hooks_pythonpath
from vmhooks.runner import ChainResult, RunnerConfig, Status, run_chain

MakeHook = Callable[..., Path]
QEMU_IMG = shutil.which("qemu-img")

# Every module and name that upstream's vdsm_hooks/ import (grep of
# `from vdsm... import` / `import vdsm...` in oVirt/vdsm).
UPSTREAM_IMPORTS = [
    "from vdsm.config import config",
    "from vdsm.hook import hooking",
    "from vdsm import constants",
    "import vdsm.network.netconfpersistence as persist_net",
    "from vdsm.common.cmdutils import CommandPath",
    "from vdsm.common import cpuarch",
    "from vdsm.common import cmdutils",
    "from vdsm import utils",
    "from vdsm import client",
    "from vdsm.storage import qemuimg",
    "from vdsm.storage import constants as sc",
    "from vdsm.network.netconfpersistence import RunningConfig",
    "from vdsm.network.link.bond import Bond",
    "from vdsm.network.ipwrapper import Link",
    "from vdsm.network.api import DUMMY_BRIDGE",
    "from vdsm.network import netswitch",
    "from vdsm.network import netinfo",
    "from vdsm.network import ipwrapper",
    "from vdsm.common.units import MiB, GiB",
    "from vdsm.common import libvirtconnection",
    "from vdsm.common import fileutils",
    "from vdsm.common import constants",
    "from vdsm.common import commands",
    "from vdsm import osinfo",
    "from vdsm import cpuinfo",
]


@pytest.fixture
def caps(hooks_dir: Path, make_hook: MakeHook) -> Callable[..., Any]:
    """caps(body, **config) -> what a Python hook at after_get_caps wrote
    with hooking.write_json (its output is used, so it comes back)."""

    def run(body: str, *, env: dict[str, str] | None = None, **config: Any) -> Any:
        make_hook("after_get_caps", "50_probe", "import hooking\n" + textwrap.dedent(body), lang="python")
        base = {**os.environ, **(env or {})}
        result = run_chain("after_get_caps", {}, RunnerConfig(hooks_dir, base_env=base, **config))
        assert result.scripts[0].status is Status.OK, result.scripts[0].stderr
        return result.payload

    return run


def test_every_upstream_import_works_for_the_system_python_too() -> None:
    interpreters = {sys.executable, *filter(None, [shutil.which("python3", path="/usr/bin")])}
    env = {**os.environ, "PYTHONPATH": hooks_pythonpath(None)}
    for interpreter in interpreters:
        code = "\n".join(UPSTREAM_IMPORTS) + "\nprint(DUMMY_BRIDGE, sc.BLANK_UUID, GiB // MiB)"
        done = subprocess.run([interpreter, "-c", code], env=env, capture_output=True, text=True, timeout=60)
        assert done.returncode == 0, f"{interpreter}: {done.stderr}"
        assert done.stdout.split() == [";vdsmdummy;", "00000000-0000-0000-0000-000000000000", "1024"]


def test_importing_reads_no_configuration_until_it_is_used(tmp_path: Path) -> None:
    """Cheap imports: vdsm.conf and tool paths are read on first use, in
    the process that uses them, not by whoever imported the module first."""
    etc = tmp_path / "etc"
    code = textwrap.dedent(f"""
        import os, pathlib
        from vdsm.common import config as module, constants
        from vdsm import constants as top
        assert "config" not in vars(module) and "EXT_DD" not in vars(constants)
        conf = pathlib.Path({str(etc)!r}) / "vdsm" / "vdsm.conf"
        conf.parent.mkdir(parents=True)
        conf.write_text("[vars]\\nfake_kvm_memory = 512\\n")
        from vdsm.config import config
        print(config.get("vars", "fake_kvm_memory"), top.EXT_DD == constants.EXT_DD)
    """)
    env = {**os.environ, "PYTHONPATH": hooks_pythonpath(None), "VMHOOKS_SYSCONF_DIR": str(etc)}
    done = subprocess.run([sys.executable, "-c", code], env=env, capture_output=True, text=True, timeout=60)
    assert done.returncode == 0, done.stderr
    assert done.stdout.split() == ["512", "True"]


# --- vdsm.config ------------------------------------------------------------------


CONFIG_HOOK = """
    from vdsm.config import config
    from vdsm.common.config import config as same
    hooking.write_json({
        "support": config.getboolean("vars", "fake_kvm_support"),
        "memory": config.get("vars", "fake_kvm_memory"),
        "arch": config.get("vars", "fake_kvm_architecture"),
        "ssl": config.getboolean("vars", "ssl"),
        "port": config.getint("addresses", "management_port"),
        "same": config is same,
    })
"""


def test_config_has_vdsm_defaults(caps: Callable[..., Any], tmp_path: Path) -> None:
    got = caps(CONFIG_HOOK, env={"VMHOOKS_SYSCONF_DIR": str(tmp_path / "empty")})
    assert got == {"support": False, "memory": "0", "arch": "x86_64", "ssl": True, "port": 54321, "same": True}


def test_config_overlays_vdsm_conf_then_dropins_in_name_order(caps: Callable[..., Any], tmp_path: Path) -> None:
    etc = tmp_path / "etc"
    (etc / "vdsm" / "vdsm.conf.d").mkdir(parents=True)
    (etc / "vdsm" / "vdsm.conf").write_text("[vars]\nfake_kvm_support = true\nfake_kvm_memory = 2048\n")
    (etc / "vdsm" / "vdsm.conf.d" / "50-memory.conf").write_text("[vars]\nfake_kvm_memory = 4096\n")
    (etc / "vdsm" / "vdsm.conf.d" / "10-ssl.conf").write_text("[vars]\nssl = false\nfake_kvm_memory = 1\n")
    (etc / "vdsm" / "vdsm.conf.d" / "ignored.txt").write_text("[vars]\nssl = true\n")
    got = caps(CONFIG_HOOK, env={"VMHOOKS_SYSCONF_DIR": str(etc)})
    assert got == {"support": True, "memory": "4096", "arch": "x86_64", "ssl": False, "port": 54321, "same": True}


def test_an_unknown_key_is_configparsers_error(caps: Callable[..., Any], tmp_path: Path) -> None:
    got = caps("""
        import configparser
        from vdsm.config import config
        try:
            config.get("vars", "no_such_key")
        except configparser.NoOptionError as exc:
            hooking.write_json({"error": type(exc).__name__, "irs": config.has_section("irs")})
    """, env={"VMHOOKS_SYSCONF_DIR": str(tmp_path)})
    assert got == {"error": "NoOptionError", "irs": True}


# --- constants, units, cmdutils, commands, fileutils ----------------------------------


def test_constants_follow_the_agent_and_find_tools_on_this_host(caps: Callable[..., Any], hooks_dir: Path, tmp_path: Path) -> None:
    got = caps("""
        from vdsm import constants
        from vdsm.common import constants as common
        hooking.write_json([constants.P_VDSM_RUN, common.P_VDSM_HOOKS, constants.EXT_DD, constants.EXT_SH,
                            constants.SYSCONF_PATH, constants.P_VDSM_CONF])
    """, env={"VMHOOKS_SYSCONF_DIR": str(tmp_path / "etc")}, run_dir=tmp_path / "run")
    assert got == [
        f"{tmp_path / 'run'}/", f"{hooks_dir}/", shutil.which("dd"), "/bin/sh",
        str(tmp_path / "etc"), f"{tmp_path / 'etc'}/vdsm/",
    ]  # fmt: skip


def test_commandpath_error_and_commands(caps: Callable[..., Any], tmp_path: Path) -> None:
    got = caps(f"""
        import errno
        from vdsm.common.cmdutils import CommandPath
        from vdsm.common import cmdutils, commands
        from vdsm.common.units import KiB, MiB, GiB, TiB
        first = CommandPath("sh", {str(tmp_path / 'absent')!r}, "/bin/sh", "/usr/bin/sh")
        searched = CommandPath("dd", {str(tmp_path / 'absent')!r})
        missing = CommandPath("no-such-tool-here", {str(tmp_path / 'absent')!r})
        try:
            missing.cmd
        except OSError as exc:
            missing_error = [exc.errno == errno.ENOENT, str(exc)]
        rc, out, err = commands.execCmd(["/bin/sh", "-c", "echo a; echo b; echo c >&2; exit 3"])
        raw = commands.execCmd(["/bin/echo", "x"], raw=True)
        try:
            commands.run(["/bin/sh", "-c", "echo bad >&2; exit 4"])
        except cmdutils.Error as exc:
            failure = [exc.rc, exc.err.decode(), str(exc)]
        hooking.write_json({{
            "first": first.cmd, "searched": str(searched), "missing": missing_error,
            "lines": [rc, [l.decode() for l in out], [l.decode() for l in err]],
            "raw": [raw[0], raw[1].decode()], "run": commands.run(["/bin/echo", "ok"]).decode(),
            "failure": failure, "units": [KiB, MiB // KiB, GiB // MiB, TiB // GiB],
        }})
    """)
    assert got["first"] == "/bin/sh"
    assert got["searched"] == shutil.which("dd")
    assert got["missing"] == [True, "[Errno 2] No such file or directory: no-such-tool-here"]
    assert got["lines"] == [3, ["a", "b"], ["c"]]
    assert got["raw"] == [0, "x\n"] and got["run"] == "ok\n"
    assert got["failure"][:2] == [4, "bad\n"]
    assert got["failure"][2] == "Command ['/bin/sh', '-c', 'echo bad >&2; exit 4'] failed with rc=4 out=b'' err=b'bad\\n'"
    assert got["units"] == [1024, 1024, 1024, 1024]


def test_fileutils_tolerate_what_is_already_gone(caps: Callable[..., Any], tmp_path: Path) -> None:
    target = tmp_path / "f"
    got = caps(f"""
        from vdsm.common import fileutils
        fileutils.touch_file({str(target)!r})
        existed = __import__("os").path.exists({str(target)!r})
        fileutils.rm_file({str(target)!r})
        fileutils.rm_file({str(target)!r})
        fileutils.rm_tree({str(tmp_path / 'no-dir')!r})
        hooking.write_json([existed, __import__("os").path.exists({str(target)!r})])
    """)
    assert got == [True, False]


# --- cpuarch, cpuinfo, osinfo --------------------------------------------------------


def test_cpuarch_effective_follows_fake_kvm_in_vdsm_conf(caps: Callable[..., Any], tmp_path: Path) -> None:
    (tmp_path / "vdsm").mkdir()
    (tmp_path / "vdsm" / "vdsm.conf").write_text("[vars]\nfake_kvm_support = true\nfake_kvm_architecture = ppc64le\n")
    got = caps("""
        from vdsm.common import cpuarch
        from vdsm import cpuinfo
        arch = cpuarch.effective()
        try:
            cpuarch._supported("noarch")
        except cpuarch.UnsupportedArchitecture as exc:
            refused = str(exc)
        hooking.write_json([cpuarch.real(), arch, cpuarch.is_ppc(arch), refused, cpuinfo.flags()])
    """, env={"VMHOOKS_SYSCONF_DIR": str(tmp_path)})
    real = os.uname().machine
    assert got[:4] == [real, "ppc64le", True, "noarch is not supported architecture."]
    with open("/proc/cpuinfo") as handle:
        for line in handle:
            if line.split(":")[0].strip() in ("flags", "Features"):
                assert got[4] == line.split(":", 1)[1].split()
                break


@pytest.fixture
def vdsm_modules(monkeypatch: pytest.MonkeyPatch) -> Iterator[None]:
    """hooklib/ on this process's path for in-process unit tests; the
    `vdsm` modules are forgotten afterwards."""
    monkeypatch.syspath_prepend(str(HOOKLIB_DIR))
    yield
    for name in [name for name in sys.modules if name == "vdsm" or name.startswith("vdsm.")]:
        del sys.modules[name]


@pytest.mark.parametrize(
    ("arch", "text", "expected"),
    [
        ("x86_64", "processor\t: 0\nmodel\t\t: 85\nmodel name\t: Xeon\ncpu MHz\t\t: 2100.000\nflags\t\t: fpu vmx sse2\n\n"
         "processor\t: 1\nmodel name\t: Other\nflags\t\t: fpu\n",
         (["fpu", "vmx", "sse2"], "2100.000", "Xeon", "85", "unavailable", "unavailable")),
        ("aarch64", "processor\t: 0\nBogoMIPS\t: 50.00\nFeatures\t: fp asimd\nCPU part\t: 0xd0c\n",
         (["fp", "asimd"], "50.00", "0xd0c", "unavailable", "unavailable", "unavailable")),
        ("ppc64le", "processor\t: 0\ncpu\t\t: POWER9\nclock\t\t: 3800.000000MHz\nplatform\t: PowerNV\n"
         "model\t\t: 9006-22P\nmachine\t\t: PowerNV 9006-22P\n",
         (["powernv"], "3800.000000", "POWER9", "9006-22P", "PowerNV", "PowerNV 9006-22P")),
    ],
)  # fmt: skip
def test_cpuinfo_parses_each_architecture(vdsm_modules: None, arch: str, text: str, expected: tuple[Any, ...]) -> None:
    from vdsm import cpuinfo

    assert tuple(cpuinfo.parse(text, arch)) == expected


NESTEDVT_HOOK = """
    from vdsm import osinfo
    nestedvt = osinfo.nested_virtualization()
    if nestedvt.enabled:
        domxml = hooking.read_domxml()
        feature = domxml.createElement("feature")
        feature.setAttribute("name", {"kvm_intel": "vmx", "kvm_amd": "svm"}[nestedvt.kvm_module])
        feature.setAttribute("policy", "require")
        domxml.getElementsByTagName("cpu")[0].appendChild(feature)
        hooking.write_domxml(domxml)
"""


@pytest.mark.parametrize(("module", "value", "feature"), [("kvm_intel", "Y", "vmx"), ("kvm_amd", "1", "svm"), ("kvm_intel", "N", None)])
def test_nested_virtualization_from_the_kvm_module(
    make_hook: MakeHook, hooks_dir: Path, tmp_path: Path, seed_xml: str, module: str, value: str, feature: str | None
) -> None:
    sys_module = tmp_path / "module"
    (sys_module / module / "parameters").mkdir(parents=True)
    (sys_module / module / "parameters" / "nested").write_text(value + "\n")
    make_hook("before_vm_start", "50_nestedvt", "import hooking\n" + textwrap.dedent(NESTEDVT_HOOK), lang="python")
    base = {**os.environ, "VMHOOKS_SYS_MODULE_DIR": str(sys_module)}
    result = run_chain("before_vm_start", seed_xml.replace("</domain>", "<cpu/></domain>"), RunnerConfig(hooks_dir, base_env=base))
    assert result.scripts[0].status is Status.OK, result.scripts[0].stderr
    if feature is None:
        assert not result.changed
    else:
        assert f'<feature name="{feature}" policy="require"/>' in result.payload


# --- storage: qemu-img -----------------------------------------------------------------


@pytest.mark.skipif(QEMU_IMG is None, reason="qemu-img is not installed")
def test_qemuimg_info_check_and_convert_on_real_images(caps: Callable[..., Any], tmp_path: Path) -> None:
    image, raw = tmp_path / "disk.qcow2", tmp_path / "copy.raw"
    subprocess.run([QEMU_IMG, "create", "-q", "-f", "qcow2", str(image), "3G"], check=True)
    garbage = tmp_path / "garbage.qcow2"
    garbage.write_bytes(b"QFI\xfb" + b"\xff" * 508)
    got = caps(f"""
        from vdsm.common import cmdutils
        from vdsm.storage import qemuimg
        from vdsm.storage import constants as sc
        from vdsm.common.units import GiB
        info = qemuimg.info({str(image)!r})
        checked = qemuimg.check({str(image)!r}, qemuimg.FORMAT.QCOW2)
        qemuimg.convert({str(image)!r}, {str(raw)!r}, srcFormat="qcow2", dstFormat=qemuimg.FORMAT.RAW).run()
        try:
            qemuimg.info({str(garbage)!r}, format="qcow2")
        except cmdutils.Error as exc:
            bad = exc.rc
        hooking.write_json({{
            "info": [info["format"], info["virtual-size"] // GiB], "offset": checked["offset"],
            "raw": qemuimg.info({str(raw)!r})["format"], "bad": bad,
            "tags": [sc.TAG_PREFIX_IMAGE, sc.TAG_PREFIX_PARENT + sc.BLANK_UUID],
        }})
    """)
    real = json.loads(subprocess.run([QEMU_IMG, "check", "--output", "json", str(image)], capture_output=True).stdout)
    assert got["info"] == ["qcow2", 3] and got["offset"] == real["image-end-offset"]
    assert got["raw"] == "raw" and raw.stat().st_size == 3 << 30
    assert got["bad"] != 0
    assert got["tags"] == ["IU_", "PU_00000000-0000-0000-0000-000000000000"]


# --- libvirt and the agent ---------------------------------------------------------------


def test_libvirtconnection_get_opens_the_agents_uri(caps: Callable[..., Any]) -> None:
    got = caps("""
        from vdsm.common import libvirtconnection
        conn = libvirtconnection.get()
        hooking.write_json([conn.getURI(), [d.name() for d in conn.listAllDomains()], conn is libvirtconnection.get()])
    """, libvirt_uri="test:///default")
    assert got == ["test:///default", ["test"], True]


def test_client_speaks_vdsm_verbs_to_the_local_agent(caps: Callable[..., Any], tmp_path: Path, hooks_dir: Path) -> None:
    agent = AgentProcess(tmp_path / "agent", tmp_path / "agent-hooks").start()
    vm_id = str(uuid.uuid4())
    try:
        agent.call("VM.create", xml=domain_xml("listed", vm_id))
        agent.call("VM.pause", vmId=vm_id)
        got = caps("""
            from vdsm import client, utils
            from vdsm.config import config
            cli = client.connect("localhost", use_tls=config.getboolean("vars", "ssl"))
            with utils.closing(cli):
                ids = cli.Host.getVMList(onlyUUID=True)
                vms = cli.Host.getVMList()
                hooks = cli.Host.getHooks()
                try:
                    cli.VM.cont(vmID="00000000-0000-0000-0000-00000000dead")
                except client.ServerError as exc:
                    error = [exc.code, exc.resp_msg]
            try:
                client.connect("elsewhere.example")
            except client.ConnectionError as exc:
                remote = str(exc)
            hooking.write_json({"ids": ids, "vms": vms, "hooks": hooks, "error": error, "remote": remote})
        """, agent_socket=agent.socket)
    finally:
        agent.stop()
    assert got["ids"] == [vm_id] and got["hooks"] == {}
    assert got["vms"] == [{"vmId": vm_id, "status": "Paused"}]  # VDSM's status names
    assert got["error"] == [2, "no VM with id 00000000-0000-0000-0000-00000000dead"]
    assert "vmhooks serves hooks on this host's agent only" in got["remote"]


def test_client_status_names_are_the_agents_reports():
    """The hooks' copy (stdlib only, so spelt out) never drifts from the agent's table."""
    import importlib.util

    from vmhooks.agent.reports import VDSM_STATUS
    from vmhooks.environment import HOOKLIB_DIR

    spec = importlib.util.spec_from_file_location("hooks_vdsm_client", HOOKLIB_DIR / "vdsm" / "client.py")
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    before = set(sys.modules)
    sys.path.insert(0, str(HOOKLIB_DIR))
    try:
        spec.loader.exec_module(module)
    finally:
        sys.path.remove(str(HOOKLIB_DIR))
        for name in set(sys.modules) - before:  # the hooks' `vdsm` is no module of this process
            del sys.modules[name]
    assert module.VDSM_STATUS == VDSM_STATUS


def test_client_without_an_agent_is_a_connection_error(caps: Callable[..., Any], tmp_path: Path) -> None:
    got = caps("""
        from vdsm import client
        try:
            client.connect("localhost")
        except client.ConnectionError as exc:
            hooking.write_json(str(exc))
    """, agent_socket=tmp_path / "none.sock")
    assert got.endswith(f"failed: no vmhooks agent socket at {tmp_path / 'none.sock'}")


# --- what this host does not have ------------------------------------------------------


def test_ovirt_networking_imports_and_refuses_clearly_when_used(caps: Callable[..., Any]) -> None:
    got = caps("""
        import vdsm.network.netconfpersistence as persist_net
        from vdsm.network import netswitch, netinfo
        from vdsm.network.link.bond import Bond
        from vdsm._compat import NotAvailableError
        errors = []
        for call in (lambda: netswitch.configurator.netinfo(), lambda: netinfo.cache.NetInfo({}),
                     lambda: persist_net.RunningConfig().save(), lambda: Bond("bond77").create()):
            try:
                call()
            except NotAvailableError as exc:
                errors.append(str(exc))
        bond = Bond("bond77", slaves=("eth7",))
        hooking.write_json({"running": persist_net.RunningConfig().networks, "persistent": persist_net.PersistentConfig().bonds,
                            "bond": [bond.exists(), sorted(bond.slaves)], "errors": errors})
    """)
    assert got["running"] == {} and got["persistent"] == {}
    assert got["bond"] == [False, ["eth7"]]
    assert len(got["errors"]) == 4
    assert got["errors"][0].startswith("vdsm.network.netswitch.configurator.netinfo is not available on this host: ")
    assert all("not available on this host" in error for error in got["errors"])


def test_a_hook_whose_property_is_unset_passes_through(make_hook: MakeHook, hooks_dir: Path, seed_xml: str) -> None:
    """The shape of upstream's extra_ipv4_addrs: oVirt networking is only
    touched when the hook's own property asks for it."""
    make_hook("before_vm_start", "50_site", """
        import os
        import hooking
        from vdsm.network import ipwrapper, netinfo, netswitch
        if 'ipv4_addrs' in os.environ:
            netinfo.cache.NetInfo(netswitch.configurator.netinfo())
    """, lang="python")
    result: ChainResult = run_chain("before_vm_start", seed_xml, RunnerConfig(hooks_dir))
    assert result.scripts[0].status is Status.OK and not result.failed
    with_property = run_chain("before_vm_start", seed_xml, RunnerConfig(hooks_dir), custom={"ipv4_addrs": "10.0.0.1"})
    assert with_property.aborts_operation
    assert "netinfo is not available on this host" in with_property.scripts[0].stderr


def test_the_agent_hands_hooks_its_libvirt_uri_and_socket(tmp_path: Path, hooks_dir: Path, make_hook: MakeHook) -> None:
    """A hook run by a real agent reaches that agent's libvirt and API."""
    make_hook("after_get_caps", "50_probe", """
        import hooking
        from vdsm import client, utils
        from vdsm.common import libvirtconnection
        caps = hooking.read_json()
        with utils.closing(client.connect("localhost")) as cli:
            caps["probe"] = [libvirtconnection.get().getURI(), cli.Host.getVMList(onlyUUID=True)]
        hooking.write_json(caps)
    """, lang="python")
    agent = AgentProcess(tmp_path / "agent", hooks_dir, "test:///default").start()
    try:
        caps = agent.client.call("Host.getCapabilities")
    finally:
        agent.stop()
    assert caps["probe"] == ["test:///default", []]
