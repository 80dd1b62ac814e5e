#!/usr/bin/env python3
"""The longest functions and the longest files of the Rust sources (a review aid, not a
test).

    python3 scripts/long_functions.py [--src DIR ...] [--top 15] [--without-tests]

A function runs from its `fn` line to the closing brace at the same indentation, as
rustfmt lays code out; test modules (`mod tests`, `tests.rs`) are left out with
--without-tests.
"""

from __future__ import annotations

import argparse
import re
from pathlib import Path

FN = re.compile(r"^(\s*)(?:pub(?:\([^)]*\))?\s+)?(?:const\s+)?(?:async\s+)?(?:unsafe\s+)?fn\s+([A-Za-z_][A-Za-z0-9_]*)")


def functions(path: Path, without_tests: bool):
    lines = path.read_text().splitlines()
    test_from = len(lines)
    if without_tests:
        if path.name == "tests.rs" or path.name.endswith("_tests.rs"):
            return
        for i, line in enumerate(lines):
            if line.startswith("#[cfg(test)]"):
                test_from = i
                break
    for i, line in enumerate(lines[:test_from]):
        m = FN.match(line)
        if not m or line.rstrip().endswith(";"):
            continue
        indent = m.group(1)
        for j in range(i, test_from):
            if lines[j] == indent + "}" or (j == i and line.rstrip().endswith("}")):
                yield m.group(2), i + 1, j - i + 1
                break


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--src", nargs="+", default=["controller/src", "kubernetes/src", "cli/src"])
    ap.add_argument("--top", type=int, default=15)
    ap.add_argument("--without-tests", action="store_true")
    a = ap.parse_args()
    found = []
    sizes = []
    for f in sorted(f for src in a.src for f in Path(src).rglob("*.rs")):
        rel = f
        sizes.append((len(f.read_text().splitlines()), str(rel)))
        for name, line, n in functions(f, a.without_tests):
            found.append((n, f"{rel}:{line}", name))
    found.sort(reverse=True)
    print(f"longest functions ({len(found)} in all):")
    for n, at, name in found[: a.top]:
        print(f"  {n:5} {name} ({at})")
    sizes.sort(reverse=True)
    print("longest files:")
    for n, rel in sizes[: a.top // 2 or 1]:
        print(f"  {n:5} {rel}")


if __name__ == "__main__":
    main()
