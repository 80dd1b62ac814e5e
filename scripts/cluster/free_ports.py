#!/usr/bin/env python3
"""Prints N distinct free TCP ports on 127.0.0.1 (the kernel picks them)."""
import socket
import sys

socks = []
for _ in range(int(sys.argv[1])):
    s = socket.socket()
    s.bind(("127.0.0.1", 0))
    socks.append(s)
print(" ".join(str(s.getsockname()[1]) for s in socks))
