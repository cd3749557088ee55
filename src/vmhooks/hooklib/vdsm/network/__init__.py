"""`vdsm.network`: host networking as VDSM hooks look at it. Reading links
(ipwrapper, bonds) works on any host; oVirt's own network management
(netswitch, persisted networks, setupNetworks) is not run by vmhooks and
raises NotAvailableError when used."""
