"""Settings: defaults, environment variables and the agent's TOML file."""
from __future__ import annotations

import os
from pathlib import Path

UPSTREAM_HOOKS_DIR = Path("/usr/libexec/vdsm/hooks")


def default_hooks_dir() -> Path:
    """`$VMHOOKS_HOOKS_DIR`, else VDSM's own hooks directory."""
    return Path(os.environ.get("VMHOOKS_HOOKS_DIR") or UPSTREAM_HOOKS_DIR)
