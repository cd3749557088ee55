"""vdsm.network.ipwrapper on real links: a network namespace with a bridge
and a veth pair, and hooks run by `vmhooks hooks run` inside it (`ip netns
exec` also gives the hook that namespace's /sys/class/net)."""
from __future__ import annotations

import itertools
import json
import os
import shutil
import subprocess
import sys
import textwrap
from collections.abc import Iterator
from pathlib import Path

import pytest

from conftest import PYTHON_SHEBANG

IP = shutil.which("ip")
_names = itertools.count()


def _ip(*args: str) -> None:
    subprocess.run([IP or "ip", *args], check=True, capture_output=True, timeout=30)


@pytest.fixture
def netns() -> Iterator[str]:
    """A namespace holding br0 (a bridge, up) and veth pair v0a/v0b, v0b a port of br0."""
    if os.geteuid() != 0 or IP is None:
        pytest.skip("network namespaces need root and iproute2")
    name = f"vmhooks-t{os.getpid()}-{next(_names)}"
    try:
        _ip("netns", "add", name)
    except subprocess.CalledProcessError as exc:
        pytest.skip(f"cannot make a network namespace here: {exc.stderr.decode().strip()}")
    try:
        _ip("-n", name, "link", "add", "br0", "type", "bridge")
        _ip("-n", name, "link", "add", "v0a", "type", "veth", "peer", "name", "v0b")
        _ip("-n", name, "link", "set", "v0b", "master", "br0")
        _ip("-n", name, "link", "set", "br0", "up")
        yield name
    finally:
        _ip("netns", "delete", name)


def hooks_run(netns: str, hooks_dir: Path, point: str, *args: str, stdin: str) -> dict:
    vmhooks = Path(sys.executable).with_name("vmhooks")
    command = [IP or "ip", "netns", "exec", netns, str(vmhooks), "hooks", "run", point, "--hooks-dir", str(hooks_dir),
               "--output", "json", *args]  # fmt: skip
    done = subprocess.run(command, input=stdin, capture_output=True, text=True, timeout=60)
    assert done.stdout, done.stderr
    return json.loads(done.stdout)


def write_hook(hooks_dir: Path, point: str, body: str) -> None:
    directory = hooks_dir / point
    directory.mkdir(mode=0o755, exist_ok=True)
    script = directory / "50_hook"
    script.write_text(f"{PYTHON_SHEBANG}\n{textwrap.dedent(body).lstrip()}")
    script.chmod(0o755)


def test_link_types_and_details_of_real_links(netns: str, hooks_dir: Path) -> None:
    write_hook(hooks_dir, "after_get_caps", """
        import hooking
        from vdsm.network import ipwrapper
        from vdsm.network.ipwrapper import Link
        br0 = ipwrapper.getLink("br0")
        port = ipwrapper.getLink("v0b")
        try:
            Link._detectType("nosuchdev0")
        except OSError as exc:
            missing = exc.errno
        hooking.write_json({
            "types": {name: Link._detectType(name) for name in ("br0", "v0a", "lo")},
            "br0": [br0.type, br0.isBRIDGE(), br0.state, br0.mtu, br0.address == open("/sys/class/net/br0/address").read().strip()],
            "port": [port.type, port.master, port.isVETH()],
            "all": sorted(link.name for link in ipwrapper.getLinks()),
            "missing": missing,
        })
    """)
    report = hooks_run(netns, hooks_dir, "after_get_caps", "--json", "-", stdin="{}")
    assert report["scripts"][0]["status"] == "ok", report["scripts"][0]["stderr"]
    got = report["payload"]
    assert got["types"] == {"br0": "bridge", "v0a": "veth", "lo": "loopback"}
    assert got["br0"] == ["bridge", True, "up", 1500, True]
    assert got["port"] == ["veth", "br0", True]
    assert got["all"] == ["br0", "lo", "v0a", "v0b"]
    assert got["missing"] == 19  # ENODEV


MACBIND_LIKE = """
    import ast
    import os
    import hooking
    from vdsm.network.ipwrapper import Link

    if 'macbind' in os.environ:
        wanted = ast.literal_eval(os.environ['macbind'])
        domxml = hooking.read_domxml()
        for mac, device in wanted.items():
            if not os.path.exists('/sys/class/net/%s' % device):
                hooking.exit_hook('macbind: no device %s' % device)
            if Link._detectType(device) != 'bridge':
                hooking.exit_hook('macbind: %s is a %s' % (device, Link._detectType(device)))
            for iface in domxml.getElementsByTagName('interface'):
                if iface.getElementsByTagName('mac')[0].getAttribute('address') == mac:
                    iface.getElementsByTagName('source')[0].setAttribute('bridge', device)
        hooking.write_domxml(domxml)
"""


def test_a_macbind_style_hook_binds_a_vnic_to_a_real_bridge(netns: str, hooks_dir: Path, seed_xml: str) -> None:
    write_hook(hooks_dir, "before_vm_start", MACBIND_LIKE)
    mac = "00:1a:4a:16:01:51"
    xml = seed_xml.replace("</devices>", f"<interface type='bridge'><mac address='{mac}'/><source bridge='ovirtmgmt'/></interface></devices>")
    bound = hooks_run(netns, hooks_dir, "before_vm_start", "--xml", "-", "--prop", f"macbind={{'{mac}': 'br0'}}", stdin=xml)
    assert bound["scripts"][0]["status"] == "ok", bound["scripts"][0]["stderr"]
    assert '<source bridge="br0"/>' in bound["payload"]
    refused = hooks_run(netns, hooks_dir, "before_vm_start", "--xml", "-", "--prop", f"macbind={{'{mac}': 'v0a'}}", stdin=xml)
    assert refused["aborts_operation"]
    assert refused["scripts"][0]["stderr"].strip() == "macbind: v0a is a veth"
