#!/usr/bin/python3
"""cpuflags: require or disable CPU features of the guest CPU.

cpuflags=+invtsc,-sgx,SAP
  +FLAG  <feature policy='require' name='FLAG'/>
  -FLAG  <feature policy='disable' name='FLAG'/>
  SAP    +invtsc,+rdtscp (what SAP's monitoring agent needs)
sap_agent=true  is the same as cpuflags=SAP, when cpuflags is not set

under <cpu> (added when missing); a <feature> already there for that flag
gets the new policy. A flag without + or -, or a flag both required and
disabled: exit 1, nothing changed.
"""
import os
import re

import hooking
import vmhooks_catalogue

SAP_FLAGS = ("+invtsc", "+rdtscp")
FLAG = re.compile(r"[+-][A-Za-z0-9_.-]+\Z")


def wanted_flags(cpuflags):
    """{flag: 'require'|'disable'}, in order; ValueError on bad input."""
    items = [item.strip() for item in cpuflags.split(",")] if cpuflags.strip() else []
    policies = {}
    for item in items:
        expanded = SAP_FLAGS if item == "SAP" else (item,)
        for flag in expanded:
            if not FLAG.match(flag):
                raise ValueError("flag %r needs a + (require) or - (disable) prefix" % flag)
            name, policy = flag[1:], "require" if flag[0] == "+" else "disable"
            if policies.get(name, policy) != policy:
                raise ValueError("flag %r is both required and disabled" % name)
            policies[name] = policy
    return policies


def main():
    cpuflags = os.environ.get("cpuflags")
    if cpuflags is None:
        if not hooking.tobool(os.environ.get("sap_agent")):
            return
        cpuflags = "SAP"
    try:
        policies = wanted_flags(cpuflags)
    except ValueError as exc:
        hooking.exit_hook("cpuflags: invalid cpuflags %r: %s" % (cpuflags, exc), 1)
    if not policies:
        return
    domxml = hooking.read_domxml()
    domain = domxml.documentElement
    cpu = vmhooks_catalogue.ensure_child(domxml, domain, "cpu")
    features = {node.getAttribute("name"): node for node in vmhooks_catalogue.elements(cpu, "feature")}
    for name, policy in policies.items():
        feature = features.get(name)
        if feature is None:
            cpu.appendChild(vmhooks_catalogue.element(domxml, "feature", {"policy": policy, "name": name}))
        else:
            feature.setAttribute("policy", policy)
    hooking.log("cpuflags: %s" % ", ".join("%s %s" % (p, n) for n, p in policies.items()))
    hooking.write_domxml(domxml)


if __name__ == "__main__":
    main()
