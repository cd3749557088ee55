#!/usr/bin/python3
"""nestedvt: let every VM run VMs of its own, when the host allows it.

No property: it acts on every VM. When the host's kvm module has nested
virtualization on (/sys/module/kvm_intel/parameters/nested or
/sys/module/kvm_amd/parameters/nested reads Y or 1), it adds

  <cpu><feature policy='require' name='vmx'/></cpu>    (svm on AMD)

A feature already there for vmx/svm is left alone. Nesting off, or no kvm
module: nothing changes. VMHOOKS_SYS_MODULE_DIR (default /sys/module)
replaces the sysfs directory read, for tests.
"""
import os

import hooking
import vmhooks_catalogue

MODULES = (("kvm_intel", "vmx"), ("kvm_amd", "svm"))


def nested_feature():
    """'vmx' or 'svm' when the loaded kvm module has nesting on, else None."""
    root = os.environ.get("VMHOOKS_SYS_MODULE_DIR") or "/sys/module"
    for module, feature in MODULES:
        path = os.path.join(root, module, "parameters", "nested")
        try:
            with open(path) as handle:
                value = handle.read().strip()
        except OSError:
            continue
        if value.upper() in ("Y", "1"):
            return feature
        hooking.log("nestedvt: nesting is off in %s (%s=%s)" % (module, path, value))
        return None
    hooking.log("nestedvt: no kvm_intel or kvm_amd module loaded")
    return None


def main():
    feature = nested_feature()
    if feature is None:
        return
    domxml = hooking.read_domxml()
    domain = domxml.documentElement
    cpu = vmhooks_catalogue.ensure_child(domxml, domain, "cpu")
    for node in cpu.getElementsByTagName("feature"):
        if node.getAttribute("name") == feature:
            hooking.log("nestedvt: <cpu> already has a %s feature (policy %r), doing nothing"
                        % (feature, node.getAttribute("policy")))
            return
    cpu.appendChild(vmhooks_catalogue.element(domxml, "feature", {"policy": "require", "name": feature}))
    hooking.log("nestedvt: the guest CPU requires %s" % feature)
    hooking.write_domxml(domxml)


if __name__ == "__main__":
    main()
