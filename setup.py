"""The one compiled part: vmhooks._spawn (see src/vmhooks/_spawn.c). Optional:
without a C compiler the package still installs and hooks are contained by a
subreaper instead of a cgroup (README, "Security")."""
from setuptools import Extension, setup

setup(ext_modules=[Extension("vmhooks._spawn", ["src/vmhooks/_spawn.c"], optional=True)])
