"""Just enough of the `vdsm` package for `from vdsm.hook import hooking`.

Only on hook processes' PYTHONPATH (appended, so a real VDSM still wins)."""
