"""The agent's calls into the runner: one recorded chain per hook point, with
the runner configuration and the property rules the agent's settings make."""
from __future__ import annotations

import logging
import os
from collections.abc import Callable, Mapping
from contextlib import AbstractContextManager
from pathlib import Path
from typing import Any

from vmhooks import environment, properties
from vmhooks.agent.outcome import Recorder
from vmhooks.catalogue import RECORD_DIR_NAME, installed_property_rules
from vmhooks.config import AgentSettings
from vmhooks.execution import Cutoff
from vmhooks.forkserver import FastPathSettings
from vmhooks.points import get_point
from vmhooks.runner import ChainResult, RunnerConfig, run_chain
from vmhooks.store import VmRecord

log = logging.getLogger("vmhooks.agent")


class HookCalls:
    def __init__(self, settings: AgentSettings, recorder: Recorder, payload_dir: Path,
                 lend: Callable[[str | None], AbstractContextManager[str | None]]) -> None:  # fmt: skip
        self.settings = settings
        self.lend = lend  # Registry.lend: the VM lock's token for an after_* chain's hooks
        self.recorder = recorder
        self.payload_dir = payload_dir
        self._base_env = dict(os.environ)  # one snapshot: copying os.environ per chain costs
        self.cutoff = Cutoff()  # fired at stop: ends the hooks of the operations still in flight
        self._rules_cache: tuple[int | None, properties.PropertyRules | None] | None = None
        self.property_rules()  # a bad --properties spec fails the start, not the first VM

    def runner_config(self) -> RunnerConfig:
        settings = self.settings
        return RunnerConfig(
            hooks_dir=settings.hooks_dir,
            timeout=settings.hook_timeout,
            timeouts=settings.hook_timeouts,
            allow_unsafe=settings.allow_unsafe_hooks,
            work_dir=self.payload_dir,
            run_dir=settings.run_dir,
            base_env=self._base_env,
            property_rules=self.property_rules(),
            hooks_pythonpath=settings.hooks_pythonpath,
            libvirt_uri=settings.libvirt_uri,
            agent_socket=settings.socket_path,
            fast_path=FastPathSettings(settings.fast_path, settings.fast_path_exclude, settings.fast_path_interpreters),
            cutoff=self.cutoff,
        )

    def cut_off(self, reason: str) -> None:
        """Kill the hooks running now, as a timeout would, and start no hook
        of any chain begun from now on, until `reopen`."""
        self.cutoff.fire(reason)

    def reopen(self) -> Cutoff:
        """Chains run as usual again (after_vdsm_stop); the fired cutoff, to
        close once nothing can wait on it."""
        fired, self.cutoff = self.cutoff, Cutoff()
        return fired

    def property_rules(self) -> properties.PropertyRules | None:
        """Installed hooks' and the admin's rules, re-read only when an
        install or uninstall changed the catalogue's records."""
        try:
            stamp: int | None = (self.settings.hooks_dir / RECORD_DIR_NAME).stat().st_mtime_ns
        except OSError:
            stamp = None
        cached = self._rules_cache
        if cached is None or cached[0] != stamp:
            rules = properties.combine(
                installed_property_rules(self.settings.hooks_dir), properties.parse_user_defined(self.settings.properties)
            )
            cached = self._rules_cache = (stamp, rules)
        return cached[1]

    def check_custom(self, values: object, origin: str) -> dict[str, str]:
        """Names, values and declared regexes, checked before anything runs."""
        checked = environment.validated(values, origin)  # type: ignore[arg-type]
        rules = self.property_rules()
        if rules is not None:
            properties.check(checked, rules, origin)
        return checked

    # -- one chain -------------------------------------------------------------

    def run(
        self,
        operation: str,
        point: str,
        payload: Any,
        vm_id: str | None,
        custom: Mapping[str, str] | None,
        params: Mapping[str, object] | None = None,
    ) -> ChainResult:
        """One chain, recorded in the history as part of the operation that
        runs it; raises HookError where it aborts."""
        # Only at after_* points: the operation's work on the VM is done, so a
        # hook's call about the same VM may go first (agent.vmlock).
        with self.lend(vm_id if get_point(point).after else None) as token:
            result = run_chain(
                point, payload, self.runner_config(), params=params, custom=custom, vm_id=vm_id, lock_token=token
            )
        self.recorder.chain(operation, vm_id, result)  # never raises: a full disk aborts nothing
        if result.failed:
            log.warning("%s", result.error_message())
        result.raise_if_aborting()
        return result

    def host(self, operation: str, point: str, payload: Any) -> ChainResult:
        return self.run(operation, point, payload, None, None)

    def vm(
        self, operation: str, point: str, payload: Any, vm: VmRecord, params: Mapping[str, object] | None = None
    ) -> ChainResult:
        return self.run(operation, point, payload, vm.vm_id, vm.custom, params)

    def device(
        self, operation: str, point: str, device_xml: str, vm: VmRecord, custom: Mapping[str, str]
    ) -> ChainResult:
        return self.run(operation, point, device_xml, vm.vm_id, custom)
