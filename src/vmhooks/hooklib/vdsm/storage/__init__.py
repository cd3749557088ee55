"""`vdsm.storage`: the parts of VDSM's storage that hooks use (qemu-img and
the volume tag constants). oVirt storage domains are not run by vmhooks."""
