"""The domain XML helpers live in `vmhooks.domxml`, which the KubeVirt
sidecar shares; this name stays for the agent's modules."""
from __future__ import annotations

from vmhooks.domxml import *  # noqa: F403
