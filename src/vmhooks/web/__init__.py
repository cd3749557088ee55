"""The web console and the Prometheus metrics (`serve --http-listen`):
read-only pages of the VMs and their hook runs, and `/metrics`.

Its packages (Jinja2, prometheus_client) are the optional extra
`vmhooks[web]`: the agent itself runs without them. Nothing below this
package imports it; the agent reaches it only through the observers it
registers."""
from __future__ import annotations

import importlib
from typing import TYPE_CHECKING

from vmhooks.errors import UsageError

if TYPE_CHECKING:
    from vmhooks.agent import Agent
    from vmhooks.web.console import WebConsole

REQUIRED = (("jinja2", "Jinja2"), ("prometheus_client", "prometheus-client"))


def missing_packages() -> list[str]:
    missing = []
    for module, package in REQUIRED:
        try:
            importlib.import_module(module)
        except ImportError:
            missing.append(package)
    return missing


def open_console(agent: Agent) -> WebConsole:
    """The console of `agent.settings.http_listen`, bound and its token
    published, not serving yet; one clear line when the extra is missing."""
    missing = missing_packages()
    if missing:
        raise UsageError(
            f"--http-listen needs the web console's packages: pip install 'vmhooks[web]' (missing: {', '.join(missing)})"
        )
    from vmhooks.web.console import WebConsole

    return WebConsole(agent)
