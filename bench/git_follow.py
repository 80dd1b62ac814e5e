"""Config from git, measured: time from `git push` to the new user logging in (poll
interval 1 s) over N pushes, and the CPU an idle 1 s poll costs.

    python3 bench/git_follow.py [N]      # needs target/debug/edgemq (or EDGEMQ_BIN)
"""

import math
import os
import statistics
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent / "e2e"))

from helpers_b import can_login  # noqa: E402
from support import Edgemq, free_port, kill_leftovers, poll  # noqa: E402
from test_git import Repo, revision, start  # noqa: E402


def cpu_seconds(pid: int) -> float:
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    # utime + stime of edgemq, and of the git processes it waited for (cutime + cstime).
    return sum(int(f) for f in fields[11:15]) / os.sysconf("SC_CLK_TCK")


def main(n: int) -> None:
    with tempfile.TemporaryDirectory() as tmp:
        tmp = Path(tmp)
        repo, port = Repo(tmp / "repo"), free_port()
        users = ["u0"]
        repo.commit(revision(port, users))
        e = start(lambda name="edgemq": Edgemq(tmp, name=name), repo)
        try:
            poll(lambda: can_login(port, "u0", "pw-u0"), 20)
            took = []
            for i in range(n):
                users.append(f"n{i}")
                t0 = time.monotonic()
                repo.commit(revision(port, users), msg=f"add n{i}")
                poll(lambda: can_login(port, f"n{i}", f"pw-n{i}"), 20, 0.01)
                took.append(time.monotonic() - t0)
            took.sort()
            p99 = took[min(len(took) - 1, math.ceil(0.99 * len(took)) - 1)]  # nearest rank
            print(f"push -> login, {n} pushes, poll 1 s: p50 {statistics.median(took) * 1000:.0f} ms, "
                  f"p99 {p99 * 1000:.0f} ms, max {took[-1] * 1000:.0f} ms")
            c0, t0 = cpu_seconds(e.proc.pid), time.monotonic()
            time.sleep(30)
            c1, t1 = cpu_seconds(e.proc.pid), time.monotonic()
            print(f"idle, 1 s poll: edgemq {100 * (c1 - c0) / (t1 - t0):.2f}% of one core "
                  "(with the git processes it runs)")
        finally:
            e.stop(expect_clean=False)
            kill_leftovers()


if __name__ == "__main__":
    main(int(sys.argv[1]) if len(sys.argv) > 1 else 10)
