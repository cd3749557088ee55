"""The API hook authors import: `import hooking` (or `from vdsm.hook import
hooking`) inside a hook process, `vmhooks.hooking` elsewhere.

Standard library only: hooks run under whatever Python their shebang names,
with this directory appended to PYTHONPATH by the runner.
"""
from __future__ import annotations

import os
import sys

# json, subprocess, tempfile and xml.dom.minidom are imported where they are
# used: together they cost more than the interpreter's own start, and most
# hooks use one or two functions of this module.

__all__ = [
    "read_domxml", "write_domxml", "read_json", "write_json", "log", "exit_hook",
    "tobool", "execCmd", "load_vm_launch_flags_from_file", "dump_vm_launch_flags_to_file",
]  # fmt: skip

DEFAULT_RUN_DIR = "/run/vmhooks"


def _payload_path(variable):
    try:
        return os.environ[variable]
    except KeyError:
        raise RuntimeError(f"{variable} is not set: this is not running as a hook") from None


def read_domxml():
    """The domain (or device) XML this hook was handed, as a minidom Document."""
    from xml.dom import minidom

    with open(_payload_path("_hook_domxml"), "rb") as handle:
        return minidom.parseString(handle.read().decode("utf-8"))


def write_domxml(domxml):
    """Hand `domxml` (a minidom Document) on to the next hook and the agent."""
    with open(_payload_path("_hook_domxml"), "wb") as handle:
        handle.write(domxml.toxml(encoding="utf-8"))


def read_json():
    import json

    with open(_payload_path("_hook_json"), "rb") as handle:
        return json.loads(handle.read().decode("utf-8"))


def write_json(data):
    import json

    with open(_payload_path("_hook_json"), "wb") as handle:
        handle.write(json.dumps(data).encode("utf-8"))


def log(message):
    """Write to stderr, which the agent records with this hook's run."""
    sys.stderr.write(f"{message}\n")


def exit_hook(message, return_code=2):
    """Report `message` and end the hook; 2 stops the chain, 1 does not."""
    sys.stderr.write(f"{message}\n")
    sys.exit(return_code)


def tobool(value):
    if value is None:
        return False
    if isinstance(value, bool):
        return value
    if isinstance(value, str) and value.lower() == "true":
        return True
    try:
        return bool(int(value))
    except (TypeError, ValueError):
        return False


def execCmd(argv, sudo=False, raw=False, data=None, env=None, cwd=None):  # noqa: N802 (VDSM's name)
    """Run `argv`; return (rc, out, err): lists of byte lines, or bytes when raw."""
    import subprocess

    command = [str(arg) for arg in argv]
    if sudo and os.geteuid() != 0:
        command = ["sudo", "-n", *command]
    if isinstance(data, str):
        data = data.encode("utf-8")
    try:
        proc = subprocess.run(
            command,
            input=data,
            stdin=None if data is not None else subprocess.DEVNULL,
            capture_output=True,
            env=env,
            cwd=cwd,
        )
    except OSError as exc:
        message = f"{command[0]}: {exc.strerror or exc}".encode()
        return (127, b"" if raw else [], message if raw else [message])
    if raw:
        return proc.returncode, proc.stdout, proc.stderr
    return proc.returncode, proc.stdout.splitlines(), proc.stderr.splitlines()


def _launch_flags_path(vm_id):
    vm_id = str(vm_id)
    if not vm_id or vm_id.startswith(".") or "/" in vm_id or "\0" in vm_id:
        raise ValueError(f"invalid VM id {vm_id!r}")
    run_dir = os.environ.get("_hook_rundir", DEFAULT_RUN_DIR)
    return os.path.join(run_dir, "launch-flags", vm_id)


def load_vm_launch_flags_from_file(vm_id):
    """The libvirt start flags the agent will use for this VM (0 when unset)."""
    try:
        with open(_launch_flags_path(vm_id)) as handle:
            text = handle.read().strip()
    except FileNotFoundError:
        return 0
    return int(text) if text else 0


def dump_vm_launch_flags_to_file(vm_id, flags):
    """Set the libvirt start flags for this VM (before_vm_start only)."""
    import tempfile

    path = _launch_flags_path(vm_id)
    directory = os.path.dirname(path)
    os.makedirs(directory, mode=0o700, exist_ok=True)
    fd, temp = tempfile.mkstemp(dir=directory, prefix=".flags-")
    try:
        with os.fdopen(fd, "w") as handle:
            handle.write(f"{int(flags)}\n")
        os.replace(temp, path)
    except BaseException:
        os.unlink(temp)
        raise
