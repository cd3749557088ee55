"""The `vdsm` package as upstream VDSM hooks import it, for hook processes.

Only on the hooks' PYTHONPATH (appended, so a real VDSM still wins); never
installed as a top-level `vdsm`. Each module keeps the names, signatures and
behaviour that hooks rely on, written for vmhooks (standard library only).
Names that stand for oVirt services a vmhooks host does not run import
fine and raise `NotAvailableError` when used, so a hook whose property is
not set still passes its payload through.

Nothing heavy runs at import time: settings that depend on the hook's
environment or on files (vdsm.conf, tool paths) are read on first use.
"""
