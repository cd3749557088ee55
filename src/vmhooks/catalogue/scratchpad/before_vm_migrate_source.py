#!/usr/bin/python3
"""scratchpad: a VM with scratch disks (files local to this host) cannot
migrate. Exit 2: the migration is aborted."""
import os
import sys

if "scratchpad" in os.environ:
    sys.stderr.write("scratchpad: cannot migrate a VM with scratch disks (%s)\n"
                     % os.environ["scratchpad"])
    sys.exit(2)
