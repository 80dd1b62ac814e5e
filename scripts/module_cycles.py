#!/usr/bin/env python3
"""Circles in the module import graph of one crate (a review aid, not a test).

    python3 scripts/module_cycles.py [--src controller/src|kubernetes/src] [--exclude broker] [--depth 1]
                                     [--without-tests] [--edges]

Each .rs file is a module (`a/mod.rs` and `a.rs` are `crate::a`). A file imports the
module files its `crate::…`, `super::…` and `self::…` paths name (the longest prefix
that is a file). Prints each strongly connected component with more than one file
(a circle: every file in it reaches every other), largest first, and with --edges the
imports inside it. --without-tests leaves out test modules. --depth 1 collapses each top-level folder into one module (the
layers).
"""

from __future__ import annotations

import argparse
import re
import sys
from pathlib import Path

PATH = re.compile(r"\b(crate|super|self)((?:::[A-Za-z_][A-Za-z0-9_]*)+)")
GROUP = re.compile(r"\b(crate|super|self)((?:::[A-Za-z_][A-Za-z0-9_]*)*)::\{([^;]*?)\}", re.S)


def module_of(src: Path, f: Path) -> tuple:
    parts = list(f.relative_to(src).with_suffix("").parts)
    if parts[-1] == "mod" or parts == ["lib"] or parts == ["main"]:
        parts = parts[:-1]
    return tuple(parts)


def expand_groups(text: str) -> list:
    """`crate::a::{b, c::d}` as `crate::a::b`, `crate::a::c::d` (one level of braces)."""
    out = []
    for m in GROUP.finditer(text):
        for item in m.group(3).split(","):
            item = item.strip().split(" as ")[0].strip()
            if item and item != "self" and re.match(r"^[A-Za-z_][\w:]*$", item):
                out.append((m.group(1), m.group(2) + "::" + item))
            elif item == "self":
                out.append((m.group(1), m.group(2)))
    return out


def graph(src: Path, tests: bool = True) -> dict:
    files = {module_of(src, f): f for f in src.rglob("*.rs")}
    # main.rs is the binary: it imports the library by name, not `crate::`.
    files.pop((), None)
    edges = {m: set() for m in files}
    for mod, f in files.items():
        # Comments (docs name modules in prose) are not imports.
        text = re.sub(r"(?m)^\s*//.*$", "", f.read_text())
        if not tests:
            # A file's unit tests sit in a `#[cfg(test)] mod tests` at its end.
            text = re.split(r"#\[cfg\(test\)\]\s*mod ", text)[0]
        text = text.replace("edgemq::", "crate::") if f.name == "main.rs" else text
        # A file's own module for `super`: `a/b.rs` is a::b, its parent a; `a/mod.rs` is
        # a, its parent the crate.
        refs = [(m.group(1), m.group(2)) for m in PATH.finditer(text)] + expand_groups(text)
        for root, tail in refs:
            segs = [s for s in tail.split("::") if s]
            if root == "crate":
                base: list = []
            elif root == "self":
                base = list(mod)
            else:
                base = list(mod[:-1])
                while segs and segs[0] == "super":
                    base, segs = base[:-1], segs[1:]
            full = base + segs
            target = None
            for n in range(len(full), 0, -1):
                if tuple(full[:n]) in files:
                    target = tuple(full[:n])
                    break
            if target and target != mod:
                edges[mod].add(target)
    return edges


def sccs(edges: dict) -> list:
    index, low, stack, on, out, counter = {}, {}, [], set(), [], [0]
    sys.setrecursionlimit(10000)

    def visit(v):
        index[v] = low[v] = counter[0]
        counter[0] += 1
        stack.append(v)
        on.add(v)
        for w in edges.get(v, ()):
            if w not in index:
                visit(w)
                low[v] = min(low[v], low[w])
            elif w in on:
                low[v] = min(low[v], index[w])
        if low[v] == index[v]:
            comp = []
            while True:
                w = stack.pop()
                on.discard(w)
                comp.append(w)
                if w == v:
                    break
            out.append(comp)
    for v in edges:
        if v not in index:
            visit(v)
    return out


def name(m: tuple) -> str:
    return "::".join(m) or "crate"


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--src", default=str(Path(__file__).resolve().parents[1] / "controller" / "src"))
    ap.add_argument("--exclude", action="append", default=[],
                    help="top-level module whose files are left out (repeatable)")
    ap.add_argument("--edges", action="store_true")
    ap.add_argument("--without-tests", action="store_true",
                    help="leave out each file's `#[cfg(test)] mod` (the build's graph)")
    ap.add_argument("--depth", type=int, default=0,
                    help="count modules only this many levels deep (1: top-level folders)")
    a = ap.parse_args()
    edges = graph(Path(a.src), tests=not a.without_tests)
    if a.depth:
        cut: dict = {}
        for m, ts in edges.items():
            cut.setdefault(m[:a.depth], set()).update(t[:a.depth] for t in ts)
        edges = {m: ts - {m} for m, ts in cut.items()}
    keep = {m for m in edges if not (m and m[0] in a.exclude)}
    edges = {m: {t for t in ts if t in keep} for m, ts in edges.items() if m in keep}
    circles = sorted((c for c in sccs(edges) if len(c) > 1), key=len, reverse=True)
    print(f"{len(edges)} module files, {sum(len(t) for t in edges.values())} imports, "
          f"{len(circles)} circle(s)")
    for c in circles:
        print(f"- {len(c)} files: " + ", ".join(sorted(name(m) for m in c)))
        if a.edges:
            inside = set(c)
            for m in sorted(c):
                for t in sorted(edges[m] & inside):
                    print(f"    {name(m)} -> {name(t)}")


if __name__ == "__main__":
    main()
