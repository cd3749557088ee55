#!/usr/bin/python3
"""cantmigrate: refuse to migrate a VM that has the `cantmigrate` custom
property, whatever its value (a VM tied to a local resource: a USB dongle,
a tape drive...). Exit 2: the migration is aborted."""
import os
import sys

if "cantmigrate" in os.environ:
    sys.stderr.write("cantmigrate: before_vm_migrate_source: cannot migrate this VM\n")
    sys.exit(2)
