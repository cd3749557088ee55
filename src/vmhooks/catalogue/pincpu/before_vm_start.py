#!/usr/bin/python3
"""pincpu: pin the VM's vCPUs to host CPUs (<vcpu cpuset=...>).

pincpu=0          the first host CPU
pincpu=1-4        host CPUs 1 to 4
pincpu=^3         not host CPU 3
pincpu=1-4,^3,6   all together

An existing cpuset is left alone. A malformed value: exit 1.
"""
import os
import re

import hooking
import vmhooks_catalogue

CPUSET = re.compile(r"(\^?[0-9]+|[0-9]+-[0-9]+)(,(\^?[0-9]+|[0-9]+-[0-9]+))*\Z")


def check_cpuset(value):
    if not CPUSET.match(value):
        return "expected N, N-M or ^N, comma separated (e.g. 1-4,^3,6)"
    for part in value.split(","):
        if "-" in part:
            low, high = part.split("-")
            if int(low) > int(high):
                return "range %s goes downwards" % part
    return None


def main():
    cpuset = os.environ.get("pincpu")
    if cpuset is None:
        return
    problem = check_cpuset(cpuset)
    if problem:
        hooking.exit_hook("pincpu: invalid value %r: %s" % (cpuset, problem), 1)
    domxml = hooking.read_domxml()
    domain = domxml.documentElement
    vcpu = vmhooks_catalogue.child(domain, "vcpu")
    if vcpu is None:
        hooking.exit_hook("pincpu: the domain has no <vcpu> element", 1)
    if vcpu.hasAttribute("cpuset"):
        hooking.log("pincpu: <vcpu> already has cpuset=%r, doing nothing" % vcpu.getAttribute("cpuset"))
        return
    hooking.log("pincpu: pinning vCPUs to host CPUs %s" % cpuset)
    vcpu.setAttribute("cpuset", cpuset)
    hooking.write_domxml(domxml)


if __name__ == "__main__":
    main()
