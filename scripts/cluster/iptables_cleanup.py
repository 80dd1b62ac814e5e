#!/usr/bin/env python3
"""Removes what the test cluster left in iptables (nat and filter tables).

- every rule whose comment names our CNI network (the bridge plugin's per-container
  masquerade chains and the portmap plugin's DNAT chains, left behind when pods were
  killed instead of torn down), and the CNI-* chains those rules jumped to;
- with --kube: every KUBE-* chain and the rules jumping to them (kube-proxy's and the
  kubelet's). Run after `kube-proxy --cleanup`, which removes most of them; the
  kubelet's KUBE-FIREWALL / KUBE-MARK-* / KUBE-KUBELET-CANARY stay otherwise.

Usage: iptables_cleanup.py NETWORK_NAME [--kube]
"""
import shlex
import subprocess
import sys

network = sys.argv[1]
kube = "--kube" in sys.argv[2:]
marker = f'name: "{network}"'


def run(*args):
    return subprocess.run(["iptables", "-w", *args], capture_output=True, text=True)


for table in ("nat", "filter", "mangle"):
    dump = subprocess.run(["iptables-save", "-t", table], capture_output=True, text=True).stdout
    chains, rules = [], []
    for line in dump.splitlines():
        if line.startswith(":"):
            chains.append(line[1:].split()[0])
        elif line.startswith("-A "):
            rules.append(shlex.split(line))
    doomed = set()
    for rule in rules:
        target = rule[rule.index("-j") + 1] if "-j" in rule else ""
        ours = any(marker in word for word in rule)
        if ours and target.startswith("CNI-"):
            doomed.add(target)
        if kube and target.startswith("KUBE-"):
            doomed.add(target)
    if kube:
        doomed.update(c for c in chains if c.startswith("KUBE-"))
    # Delete rules that are ours or jump to a doomed chain (outside doomed chains:
    # those are flushed whole below).
    for rule in rules:
        chain = rule[1]
        target = rule[rule.index("-j") + 1] if "-j" in rule else ""
        if chain in doomed:
            continue
        if any(marker in word for word in rule) or target in doomed:
            run("-t", table, "-D", chain, *rule[2:])
    for chain in doomed:
        run("-t", table, "-F", chain)
    for chain in doomed:
        run("-t", table, "-X", chain)
