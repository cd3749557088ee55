#!/usr/bin/python3
"""floppy: a VM with a floppy image (a file local to this host) cannot
migrate. Exit 2: the migration is aborted."""
import os
import sys

if "floppy" in os.environ:
    sys.stderr.write("floppy: cannot migrate a VM with a floppy image (%s)\n" % os.environ["floppy"])
    sys.exit(2)
