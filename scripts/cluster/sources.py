#!/usr/bin/env python3
"""Prints a deb-src entry for bookworm derived from the machine's own deb entries.

`apt-get source` needs a deb-src entry; the machine's APT configuration names the
mirror, so the entry is derived from it instead of naming one here. Reads
/etc/apt/sources.list and /etc/apt/sources.list.d/*.list / *.sources (one-line and
deb822 formats) and prints the equivalent deb-src entries in deb822 format. Prints
nothing when a deb-src entry for bookworm already exists.
"""
import glob
import sys

SUITE = sys.argv[1] if len(sys.argv) > 1 else "bookworm"
ROOT = sys.argv[2] if len(sys.argv) > 2 else "/etc/apt"


def stanzas(path):
    block = {}
    for raw in open(path, encoding="utf-8", errors="replace"):
        line = raw.rstrip("\n")
        if not line.strip():
            if block:
                yield block
            block = {}
            continue
        if line.lstrip().startswith("#") or ":" not in line or line[0].isspace():
            continue
        key, _, value = line.partition(":")
        block[key.strip().lower()] = value.strip()
    if block:
        yield block


def one_line(path):
    for raw in open(path, encoding="utf-8", errors="replace"):
        words = raw.split("#", 1)[0].split()
        if len(words) < 3 or words[0] not in ("deb", "deb-src"):
            continue
        options = ""
        if words[1].startswith("["):
            # "[signed-by=... arch=...]" may span several words
            opts = []
            while words and not words[1].endswith("]"):
                opts.append(words.pop(1))
            opts.append(words.pop(1))
            options = " ".join(opts)[1:-1]
        yield {"types": words[0], "uris": words[1], "suites": words[2],
               "components": " ".join(words[3:]), "options": options}


entries = []
files = [f"{ROOT}/sources.list"] + sorted(glob.glob(f"{ROOT}/sources.list.d/*.list"))
for path in files:
    try:
        entries.extend(one_line(path))
    except FileNotFoundError:
        pass
for path in sorted(glob.glob(f"{ROOT}/sources.list.d/*.sources")):
    entries.extend(s for s in stanzas(path) if s.get("enabled", "yes") != "no")


def wanted(entry):
    return any(s == SUITE or s.startswith(SUITE + "-") for s in entry.get("suites", "").split())


if any("deb-src" in e.get("types", "").split() and wanted(e) for e in entries):
    sys.exit(0)
out = []
for e in entries:
    if "deb" not in e.get("types", "").split() or not wanted(e):
        continue
    stanza = [f"Types: deb-src", f"URIs: {e['uris']}", f"Suites: {e['suites']}",
              f"Components: {e.get('components', 'main')}"]
    signed = e.get("signed-by")
    for opt in e.get("options", "").split():
        if opt.startswith("signed-by="):
            signed = opt.split("=", 1)[1]
    if signed:
        stanza.append(f"Signed-By: {signed}")
    out.append("\n".join(stanza))
print("\n\n".join(out))
