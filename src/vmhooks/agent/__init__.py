"""The host agent (see core.py)."""
