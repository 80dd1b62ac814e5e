"""Pytest fixtures for edgemq's black-box tests.

Fixtures:
    edgemq            factory: edgemq(name="edgemq", secrets=False, ...) -> support.Edgemq
                      (not started; call .write(...) then .start()). Stopped at teardown.
    mosquitto         factory: mosquitto(extra_lines, name=...) -> started support.Mosquitto
    clients           factory: clients(port, **connect_kw) -> support.Client, disconnected
                      at teardown
    edgemq_bin        path of the binary under test

On a failing test, the tail of every edgemq / mosquitto log the test started is
printed in the report. Under CI (CI set, as .ci/run does) a skipped test is reported as
failed: CI installs every peer, so nothing there may pass by being skipped.
"""

from __future__ import annotations

import os
import sys
from pathlib import Path

import pytest

sys.path.insert(0, str(Path(__file__).resolve().parent))

import support  # noqa: E402


@pytest.hookimpl(tryfirst=True, hookwrapper=True)
def pytest_runtest_makereport(item, call):
    outcome = yield
    rep = outcome.get_result()
    if rep.skipped and os.environ.get("CI") and not hasattr(rep, "wasxfail"):
        reason = rep.longrepr[2] if isinstance(rep.longrepr, tuple) else rep.longrepr
        rep.outcome = "failed"
        rep.longrepr = f"skipped under CI, where nothing may be skipped: {reason}"
    setattr(item, "rep_" + rep.when, rep)


def _failed(request) -> bool:
    for when in ("setup", "call"):
        rep = getattr(request.node, "rep_" + when, None)
        if rep is not None and rep.failed:
            return True
    return False


@pytest.fixture
def edgemq_bin():
    return support.edgemq_bin()


@pytest.fixture
def edgemq(tmp_path, request):
    made: list = []

    def factory(name: str = "edgemq", secrets: bool = False, extra_args=None, env=None):
        support.edgemq_bin()
        e = support.Edgemq(tmp_path, name=name, secrets=secrets, extra_args=extra_args, env=env)
        made.append(e)
        return e

    yield factory
    failed = _failed(request)
    for e in made:
        if failed and e.log_path.exists():
            sys.stderr.write(f"\n--- {e.root.name} log tail ---\n{e.log_tail(80)}\n")
        if e.running():
            e.stop(expect_clean=False)
        e.kill()


@pytest.fixture
def mosquitto(tmp_path, request):
    made: list = []

    def factory(extra=None, name: str = "mosquitto", port=None, start: bool = True):
        m = support.Mosquitto(tmp_path, extra, name=name + (f"-{len(made)}" if made else ""),
                              port=port)
        made.append(m)
        return m.start() if start else m

    yield factory
    failed = _failed(request)
    for m in made:
        if failed:
            sys.stderr.write(f"\n--- {m.root.name} ---\n{m.log_tail()}\n")
        m.stop()


@pytest.fixture
def clients():
    made: list = []

    def factory(port, **kw):
        c = support.connect(port, **kw)
        made.append(c)
        return c

    factory.track = made.append  # also disconnect clients made elsewhere
    yield factory
    for c in made:
        try:
            c.disconnect_wait(timeout=2)
        except Exception:  # noqa: BLE001
            pass


@pytest.fixture(autouse=True, scope="session")
def _kill_leftover_processes():
    # Fixtures stop what they start; this catches anything left when the session ends
    # (by pid, only processes started through support).
    yield
    support.kill_leftovers()
