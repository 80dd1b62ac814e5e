"""Shared helpers for edgemq's black-box tests.

Everything here talks to real processes on loopback: the built `edgemq` binary,
a real Mosquitto broker, and real MQTT clients (Paho, mosquitto_pub/sub).
Processes are started on free ports and stopped by process id.

Public API (other test modules rely on it, keep it stable):

    REPO, E2E_DIR, FIXTURES
    free_port() -> int
    edgemq_bin() -> str
    require(cmd, package=None)
    poll(fn, timeout=10, interval=0.05, message=None, detail=None) -> value  (the one
        poller; fn raises GiveUp to end the wait at once)
    timed_poll(fn, ..., since=None, edgemq=None) -> seconds;  settle(clients, quiet, limit)
    wait_port(port, timeout=10, host="127.0.0.1")
    run(args, timeout=30, **kw) -> subprocess.CompletedProcess
    Edgemq(tmp_path, ...)     .write/.remove/.start/.stop/.kill/.status/.metrics/
                              .wait_applied/.diagnose/.log_tail/.http_get
                              .config_dir/.state_dir/.secrets_dir/.http_port
    metric(metrics, key, default=<fail>) -> float   (a missing series fails)
    Mosquitto(tmp_path, ...)  .start/.stop/.port/.conf_path/.log_tail
    connect(port, ...) -> Client    (paho client with a started loop)
    pub(port, topic, payload, ...)  / sub(port, topic, ...) -> Client
    Client: .messages (queue.Queue of paho messages), .get(timeout), .expect_none(t),
            .publish_wait(...), .subscribe_wait(...), .disconnect_wait(), .close_abruptly()
    ConnectRefused (exception with .rc / .reason)
    MQTTv311, MQTTv5
    raw MQTT (the one raw layer, in mqtt_raw.py, re-exported here): packet, connect_packet, publish_packet, subscribe_packet,
        mqtt_str, DISCONNECT; on a socket: read_packet, read_until, closed_by_peer,
        nothing_more, raw_connect -> (socket, rc), can_login, qos1_publish, read_publishes;
        RawConn(port) .send/.read_packet/.connect/.closed_by_peer/.buf;
        raw_connack(port, ...) -> (CONNACK, closed), connack_code(port, ...)
"""

from __future__ import annotations

import json
import os
import queue
import shutil
import signal
import socket
import subprocess
import threading
import time
import urllib.error
import urllib.request
from pathlib import Path
from typing import Any, Callable, Optional

import pytest

import paho.mqtt.client as mqtt
from paho.mqtt.client import MQTTv311, MQTTv5  # re-exported
from paho.mqtt.properties import Properties
from paho.mqtt.packettypes import PacketTypes

E2E_DIR = Path(__file__).resolve().parent
REPO = E2E_DIR.parent
FIXTURES = E2E_DIR / "fixtures"

# Which distribution package provides a peer, for the "install X" message.
PACKAGES = {
    "mosquitto": "mosquitto",
    "mosquitto_pub": "mosquitto-clients",
    "mosquitto_sub": "mosquitto-clients",
    "mosquitto_passwd": "mosquitto (it ships mosquitto_passwd)",
    "node": "nodejs",
    "openssl": "openssl",
}


# --------------------------------------------------------------------------- basics

def free_port() -> int:
    """A free TCP port on 127.0.0.1 (bind to port 0, read it back, release it)."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _missing(message: str):
    if os.environ.get("CI"):
        pytest.fail(message, pytrace=False)
    pytest.skip(message)


def edgemq_bin() -> str:
    """Path of the edgemq binary under test: $EDGEMQ_BIN or <repo>/target/debug/edgemq."""
    path = os.environ.get("EDGEMQ_BIN") or str(REPO / "target" / "debug" / "edgemq")
    if not (os.path.isfile(path) and os.access(path, os.X_OK)):
        pytest.fail(
            f"edgemq binary not found at {path}: run `cargo build --workspace --bins` "
            "or set EDGEMQ_BIN",
            pytrace=False,
        )
    return path


def require(cmd: str, package: Optional[str] = None) -> str:
    """Full path of a peer program. Missing: fail in CI, skip locally with a hint."""
    found = shutil.which(cmd)
    if found:
        return found
    pkg = package or PACKAGES.get(cmd, cmd)
    _missing(f"peer `{cmd}` not found: install package {pkg}")
    raise AssertionError("unreachable")


def require_node_mqtt() -> str:
    """Path of node, after checking MQTT.js is installed in e2e/node_modules."""
    node = require("node", "nodejs")
    if not (E2E_DIR / "node_modules" / "mqtt").is_dir():
        _missing("MQTT.js not installed: run `npm install` in e2e/ (package mqtt)")
    return node


class GiveUp(AssertionError):
    """Raised by a poll condition to end the wait at once (a process exited, a pod
    failed): waiting longer cannot help."""


def poll(fn: Callable[[], Any], timeout: float = 10.0, interval: float = 0.05,
         message: Optional[str] = None, detail: Optional[Callable[[], str]] = None) -> Any:
    """Call fn until it returns a truthy value; return it. Raise AssertionError at the deadline.

    The one poller of the black-box tests. Exceptions raised by fn count as "not yet"
    (the last one is shown on timeout), except GiveUp, which ends the wait at once.
    detail: called on timeout for more context (a status, a log tail) for the error.
    """
    deadline = time.monotonic() + timeout
    last_exc: Optional[BaseException] = None
    while True:
        try:
            value = fn()
            if value:
                return value
            last_exc = None
        except GiveUp:
            raise
        except Exception as exc:  # noqa: BLE001 - polling tolerates transient errors
            last_exc = exc
        if time.monotonic() >= deadline:
            text = f"{message or 'condition not met'} within {timeout}s"
            if last_exc:
                text += f" (last error: {last_exc!r})"
            if detail is not None:
                try:
                    text += "\n" + detail()
                except Exception as exc:  # noqa: BLE001 - the timeout is the error to show
                    text += f"\n(no detail: {exc!r})"
            raise AssertionError(text)
        time.sleep(interval)


def timed_poll(fn, timeout: float = 10.0, interval: float = 0.01, message: Optional[str] = None,
               since: Optional[float] = None, edgemq=None) -> float:
    """poll(fn) and return the seconds from `since` (default: now) to success. With
    `edgemq`, a timeout also shows its status and log tail."""
    start = since if since is not None else time.monotonic()
    poll(fn, timeout, interval, message, detail=edgemq.diagnose if edgemq is not None else None)
    return time.monotonic() - start


def settle(clients, quiet: float = 0.7, limit: float = 15.0) -> None:
    """Wait until no client (support.Client; None entries are ignored) has received
    anything for `quiet` seconds, for at most `limit` seconds."""
    seen = {"n": -1, "since": time.monotonic()}

    def quiet_for_long_enough():
        n = sum(c.messages.qsize() for c in clients if c is not None)
        if n != seen["n"]:
            seen["n"], seen["since"] = n, time.monotonic()
        return time.monotonic() - seen["since"] >= quiet
    try:
        poll(quiet_for_long_enough, limit, 0.05)
    except AssertionError:
        pass  # still busy at the limit: the caller's checks report what arrived


def port_open(port: int, host: str = "127.0.0.1") -> bool:
    try:
        with socket.create_connection((host, port), timeout=0.5):
            return True
    except OSError:
        return False


def wait_port(port: int, timeout: float = 10.0, host: str = "127.0.0.1") -> None:
    poll(lambda: port_open(port, host), timeout, message=f"port {host}:{port} accepting")


def run(args, timeout: float = 30.0, check: bool = False, **kw) -> subprocess.CompletedProcess:
    """Run a command, capture text output, with a timeout."""
    kw.setdefault("capture_output", True)
    kw.setdefault("text", True)
    return subprocess.run([str(a) for a in args], timeout=timeout, check=check, **kw)


def mosquitto_round_trip(sub_args: list, pub_args: list, message: str, timeout: float,
                         what: str = "mosquitto_sub received the message") -> str:
    """What mosquitto_sub (`sub_args`, taking one QoS 1 message) prints of what
    mosquitto_pub (`pub_args`) sends. The subscriber's SUBACK is not observable from
    outside, so the message is published until the subscriber prints it; fails (an
    AssertionError naming `what`) when it never does, when mosquitto_pub fails, or when
    mosquitto_sub ends with an error."""
    msub, mpub = require("mosquitto_sub"), require("mosquitto_pub")
    sub = subprocess.Popen([msub, *map(str, sub_args), "-C", "1", "-W", str(int(timeout)),
                            "-q", "1"],
                           stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    try:
        def delivered():
            r = run([mpub, *pub_args, "-m", message, "-q", "1"], timeout=timeout)
            assert r.returncode == 0, f"mosquitto_pub failed ({r.returncode}): {r.stderr}"
            try:
                sub.wait(timeout=0.3)
            except subprocess.TimeoutExpired:
                return False
            return True

        poll(delivered, timeout, 0.05, what)
        out, err = sub.communicate(timeout=5)
        assert sub.returncode == 0, f"mosquitto_sub failed ({sub.returncode}): {err}"
        return out.strip()
    finally:
        if sub.poll() is None:
            sub.kill()
            sub.wait()


def _tail(path: Path, lines: int = 60) -> str:
    try:
        text = Path(path).read_text(errors="replace")
    except OSError:
        return "(no log)"
    return "\n".join(text.splitlines()[-lines:])


# Every process started through this module, so teardown can stop leftovers by pid.
_LIVE: "list[subprocess.Popen]" = []


def _stop_proc(proc: subprocess.Popen, sig=signal.SIGTERM, timeout: float = 10.0) -> Optional[int]:
    if proc.poll() is not None:
        return proc.returncode
    try:
        proc.send_signal(sig)
        return proc.wait(timeout=timeout)
    except subprocess.TimeoutExpired:
        proc.kill()
        proc.wait(timeout=5)
        return None


def kill_leftovers() -> None:
    """Kill (by pid) every process this module started that is still running."""
    while _LIVE:
        proc = _LIVE.pop()
        if proc.poll() is None:
            proc.kill()
            try:
                proc.wait(timeout=5)
            except subprocess.TimeoutExpired:
                pass


# --------------------------------------------------------------------------- edgemq

class Edgemq:
    """An `edgemq run` process over a temporary config folder.

        e = Edgemq(tmp_path)
        e.write("broker.yaml", YAML)
        e.start()                      # waits for /readyz
        e.status(); e.metrics()
        e.stop()                       # SIGTERM, asserts a clean exit
    """

    def __init__(self, root: Path, name: str = "edgemq", secrets: bool = False,
                 extra_args: Optional[list] = None, env: Optional[dict] = None):
        self.root = Path(root) / name
        self.config_dir = self.root / "config"
        self.state_dir = self.root / "state"
        self.secrets_dir: Optional[Path] = (self.root / "secrets") if secrets else None
        for d in (self.config_dir, self.state_dir, self.secrets_dir):
            if d is not None:
                d.mkdir(parents=True, exist_ok=True)
        self.log_path = self.root / "edgemq.log"
        self.http_port = free_port()
        self.extra_args = list(extra_args or [])
        self.env = env
        self.proc: Optional[subprocess.Popen] = None
        self._log = None

    # config folder --------------------------------------------------------
    def write(self, name: str, text: str) -> Path:
        """Write a file into the config folder atomically (rename), so the watcher
        never sees a half-written file."""
        path = self.config_dir / name
        path.parent.mkdir(parents=True, exist_ok=True)
        tmp = path.parent / f".{path.name}.tmp"
        tmp.write_text(text)
        os.replace(tmp, path)
        return path

    def write_secret(self, name: str, text: str) -> Path:
        assert self.secrets_dir is not None, "Edgemq(..., secrets=True) needed"
        path = self.secrets_dir / name
        tmp = path.parent / f".{path.name}.tmp"
        tmp.write_text(text)
        os.replace(tmp, path)
        return path

    def remove(self, name: str) -> None:
        (self.config_dir / name).unlink()

    # process --------------------------------------------------------------
    @property
    def http(self) -> str:
        return f"http://127.0.0.1:{self.http_port}"

    def command(self) -> list:
        args = [edgemq_bin(), "run", "--config", str(self.config_dir),
                "--state", str(self.state_dir), "--http", f"127.0.0.1:{self.http_port}"]
        if self.secrets_dir is not None:
            args += ["--secrets", str(self.secrets_dir)]
        return args + self.extra_args

    def start(self, timeout: float = 20.0, wait_ready: bool = True) -> "Edgemq":
        assert self.proc is None or self.proc.poll() is not None, "already running"
        self._log = open(self.log_path, "ab")
        env = dict(os.environ)
        env.setdefault("RUST_LOG", "info")
        env.setdefault("RUST_BACKTRACE", "1")
        if self.env:
            env.update(self.env)
        self.proc = subprocess.Popen(self.command(), stdout=self._log, stderr=subprocess.STDOUT,
                                     stdin=subprocess.DEVNULL, env=env)
        _LIVE.append(self.proc)
        if wait_ready:
            self.wait_ready(timeout)
        return self

    def wait_ready(self, timeout: float = 20.0) -> None:
        """Poll GET /readyz until 200; fail at once if the process exits."""
        def ready():
            if self.proc.poll() is not None:
                raise GiveUp(f"edgemq exited with status {self.proc.returncode} before "
                             f"ready\n--- log tail ---\n{self.log_tail()}")
            code, body = self.http_get("/readyz", timeout=1.0)
            assert code == 200, f"{code} {body[:200]}"
            return True
        poll(ready, timeout, message="edgemq ready",
             detail=lambda: f"--- log tail ---\n{self.log_tail()}")

    def running(self) -> bool:
        return self.proc is not None and self.proc.poll() is None

    def stop(self, timeout: float = 15.0, expect_clean: bool = True) -> Optional[int]:
        """SIGTERM and wait; assert exit status 0 unless expect_clean=False."""
        if self.proc is None:
            return None
        rc = _stop_proc(self.proc, signal.SIGTERM, timeout)
        self._close_log()
        if expect_clean:
            assert rc == 0, f"edgemq did not exit cleanly on SIGTERM (rc={rc})\n{self.log_tail()}"
        return rc

    def kill(self) -> None:
        """SIGKILL (a crash / power cut)."""
        if self.proc is not None and self.proc.poll() is None:
            self.proc.kill()
            self.proc.wait(timeout=5)
        self._close_log()

    def restart(self, timeout: float = 20.0) -> "Edgemq":
        self.stop()
        return self.start(timeout)

    def _close_log(self):
        if self._log is not None:
            self._log.close()
            self._log = None

    def log_tail(self, lines: int = 60) -> str:
        return _tail(self.log_path, lines)

    def log_text(self) -> str:
        try:
            return self.log_path.read_text(errors="replace")
        except OSError:
            return ""

    # HTTP -----------------------------------------------------------------
    def http_get(self, path: str, timeout: float = 3.0):
        """(status code, body text) of GET path on the HTTP endpoint."""
        try:
            with urllib.request.urlopen(self.http + path, timeout=timeout) as resp:
                return resp.status, resp.read().decode("utf-8", "replace")
        except urllib.error.HTTPError as exc:
            return exc.code, exc.read().decode("utf-8", "replace")

    def status(self) -> Any:
        code, body = self.http_get("/status")
        assert code == 200, f"GET /status -> {code}: {body}"
        return json.loads(body)

    def metrics(self) -> dict:
        """Prometheus text from /metrics as {"name{labels}": float}; also the bare
        name maps to the sum over all label sets."""
        code, body = self.http_get("/metrics")
        assert code == 200, f"GET /metrics -> {code}: {body}"
        return parse_metrics(body)

    def wait_applied(self, pred: Callable[[Any], Any], timeout: float = 15.0,
                     message: str = "config applied") -> Any:
        """Poll /status until pred(status_json) is truthy; return pred's value."""
        return poll(lambda: pred(self.status()), timeout, 0.1, message, detail=self.diagnose)

    def diagnose(self) -> str:
        """The last /status and the log tail, for a failed wait."""
        try:
            st = json.dumps(self.status(), indent=1)[:4000]
        except Exception as exc:  # noqa: BLE001
            st = repr(exc)
        return f"last status: {st}\n--- log tail ---\n{self.log_tail()}"

    def cert_path(self, cert_name: str, namespace: str = "default", file: str = "tls.crt") -> Path:
        return self.state_dir / "certs" / f"{namespace}_{cert_name}" / file

    def cli(self, *args, timeout: float = 30.0) -> subprocess.CompletedProcess:
        return run([edgemq_bin(), *args], timeout=timeout)


def parse_metrics(text: str) -> dict:
    out: dict = {}
    for line in text.splitlines():
        line = line.strip()
        if not line or line.startswith("#"):
            continue
        try:
            key, value = line.rsplit(None, 1)
            # a trailing timestamp: "name 1 1712345"
            if " " in key and not key.endswith("}"):
                key, value = line.split(None, 2)[0], line.split(None, 2)[1]
            v = float(value)
        except ValueError:
            continue
        out[key] = v
        base = key.split("{", 1)[0]
        if base != key:
            out[base] = out.get(base, 0.0) + v
        elif base not in out:
            out[base] = v
    return out



_ABSENT = object()


def metric(metrics: dict, key: str, default: Any = _ABSENT) -> float:
    """A metric from Edgemq.metrics(): the sample with exactly this key, else the sum of
    the samples whose label set contains the key's labels (label order in the exposition
    is not fixed; a bare name is the sum over all its label sets).

    A series that is not there fails the test (a renamed or vanished metric must not
    read as 0); pass `default` only where absence is legitimately expected, and say why
    at the call."""
    if key in metrics:
        return metrics[key]
    base, _, labels = key.partition("{")
    if labels:
        want = set(labels[:-1].split(","))
        found = [v for k, v in metrics.items()
                 if k.startswith(base + "{") and want <= set(k[len(base) + 1:-1].split(","))]
        if found:
            return sum(found)
    if default is not _ABSENT:
        return default
    same = sorted(k for k in metrics if k.split("{", 1)[0] == base)
    raise AssertionError(f"metric {key} not exported; series of {base}: {same or 'none'}")


# --------------------------------------------------------------------------- mosquitto

class Mosquitto:
    """A real Mosquitto broker on a free loopback port.

        m = Mosquitto(tmp_path, ["allow_anonymous true"]).start()
        m.port
    """

    def __init__(self, root: Path, extra: Optional[list] = None, name: str = "mosquitto",
                 port: Optional[int] = None, listener: bool = True):
        self.bin = require("mosquitto")
        self.root = Path(root) / name
        self.root.mkdir(parents=True, exist_ok=True)
        self.port = port or free_port()
        self.conf_path = self.root / "mosquitto.conf"
        self.log_path = self.root / "mosquitto.log"
        lines = ["user root", "persistence false", f"log_dest file {self.log_path}",
                 "log_type all"]
        if listener:
            lines.append(f"listener {self.port} 127.0.0.1")
        lines += list(extra or [])
        self.conf_path.write_text("\n".join(lines) + "\n")
        self.proc: Optional[subprocess.Popen] = None

    def start(self, timeout: float = 10.0) -> "Mosquitto":
        self._out = open(self.root / "stdout.log", "ab")
        self.proc = subprocess.Popen([self.bin, "-c", str(self.conf_path)], stdout=self._out,
                                     stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL)
        _LIVE.append(self.proc)
        try:
            poll(lambda: self._alive_or_raise() and port_open(self.port), timeout,
                 message=f"mosquitto listening on {self.port}")
        except AssertionError as exc:
            raise AssertionError(f"{exc}\n{self.log_tail()}") from None
        return self

    def _alive_or_raise(self) -> bool:
        if self.proc.poll() is not None:
            raise GiveUp(f"mosquitto exited with {self.proc.returncode}")
        return True

    def stop(self) -> None:
        if self.proc is not None:
            _stop_proc(self.proc)
            self._out.close()
            self.proc = None

    def log_tail(self, lines: int = 40) -> str:
        return ("--- mosquitto.log ---\n" + _tail(self.log_path, lines)
                + "\n--- stdout ---\n" + _tail(self.root / "stdout.log", lines))


# --------------------------------------------------------------------------- paho clients

class ConnectRefused(Exception):
    """The broker answered CONNECT with a failure (rc / reason code) or never answered."""

    def __init__(self, rc, reason=None):
        super().__init__(f"connect refused: rc={rc} reason={reason}")
        self.rc = rc
        self.reason = reason


_counter = [0]
_counter_lock = threading.Lock()


def unique_id(prefix: str = "t") -> str:
    with _counter_lock:
        _counter[0] += 1
        return f"{prefix}-{os.getpid()}-{_counter[0]}"


class Client:
    """A paho client with a running network loop; received messages go to .messages."""

    def __init__(self, client: mqtt.Client, protocol):
        self.c = client
        self.protocol = protocol
        self.messages: "queue.Queue[mqtt.MQTTMessage]" = queue.Queue()
        self.connack = threading.Event()
        self.connect_rc = None
        self.connect_reason = None
        self.connect_props = None
        self.disconnected = threading.Event()
        self.disconnect_rc = None
        self.subacks: "queue.Queue" = queue.Queue()
        self.pubacks: dict = {}
        self._lock = threading.Lock()
        client.on_connect = self._on_connect
        client.on_disconnect = self._on_disconnect
        client.on_message = self._on_message
        client.on_subscribe = self._on_subscribe
        client.on_publish = self._on_publish

    # callbacks (paho 2.x, CallbackAPIVersion.VERSION2)
    def _on_connect(self, client, userdata, flags, reason_code, properties):
        self.connect_rc = reason_code
        self.connect_reason = reason_code
        self.connect_props = properties
        self.session_present = getattr(flags, "session_present", None)
        self.connack.set()

    def _on_disconnect(self, client, userdata, flags, reason_code, properties):
        self.disconnect_rc = reason_code
        self.disconnected.set()

    def _on_message(self, client, userdata, msg):
        self.messages.put(msg)

    def _on_subscribe(self, client, userdata, mid, reason_codes, properties):
        self.subacks.put((mid, [rc.value if hasattr(rc, "value") else int(rc) for rc in reason_codes]))

    def _on_publish(self, client, userdata, mid, reason_code, properties):
        with self._lock:
            self.pubacks[mid] = reason_code

    # convenience
    def get(self, timeout: float = 5.0) -> mqtt.MQTTMessage:
        try:
            return self.messages.get(timeout=timeout)
        except queue.Empty:
            raise AssertionError(f"no message received within {timeout}s") from None

    def get_or_none(self, timeout: float = 1.0) -> Optional[mqtt.MQTTMessage]:
        try:
            return self.messages.get(timeout=timeout)
        except queue.Empty:
            return None

    def expect_none(self, timeout: float = 1.0) -> None:
        msg = self.get_or_none(timeout)
        assert msg is None, f"unexpected message on {msg.topic!r}: {msg.payload!r}"

    def drain(self) -> list:
        out = []
        while True:
            try:
                out.append(self.messages.get_nowait())
            except queue.Empty:
                return out

    def subscribe_wait(self, topic, qos: int = 0, timeout: float = 5.0) -> list:
        """Subscribe and wait for the SUBACK; returns the list of granted codes
        (QoS 0-2, or >= 0x80 for failures)."""
        result, mid = self.c.subscribe(topic, qos)
        assert result == mqtt.MQTT_ERR_SUCCESS, f"subscribe failed locally: {result}"
        deadline = time.monotonic() + timeout
        while True:
            left = deadline - time.monotonic()
            if left <= 0:
                raise AssertionError(f"no SUBACK for {topic!r} within {timeout}s")
            try:
                got_mid, codes = self.subacks.get(timeout=left)
            except queue.Empty:
                continue
            if got_mid == mid:
                return codes

    def publish_wait(self, topic, payload=b"", qos: int = 0, retain: bool = False,
                     timeout: float = 5.0, properties=None):
        """Publish and wait until paho considers it sent/acknowledged. Returns the
        MQTT 5 reason code of the PUBACK/PUBREC when known, else None."""
        info = self.c.publish(topic, payload, qos=qos, retain=retain, properties=properties)
        info.wait_for_publish(timeout)
        assert info.is_published(), f"publish to {topic!r} (qos {qos}) not completed in {timeout}s"
        with self._lock:
            return self.pubacks.get(info.mid)

    def disconnect_wait(self, timeout: float = 5.0, properties=None) -> None:
        """Clean DISCONNECT, then stop the loop."""
        if self.c.is_connected():
            self.c.disconnect(properties=properties)
            self.disconnected.wait(timeout)
        self.c.loop_stop()

    def close_abruptly(self) -> None:
        """Close the TCP socket without sending DISCONNECT (an abnormal disconnect)."""
        sock = self.c.socket()
        self.c.reconnect_delay_set(120, 120)
        if sock is not None:
            try:
                sock.shutdown(socket.SHUT_RDWR)
            except OSError:
                pass
            sock.close()
        self.c.loop_stop()

    def is_connected(self) -> bool:
        return self.c.is_connected()


def make_client(client_id: Optional[str] = None, protocol=MQTTv311, clean: bool = True,
                username: Optional[str] = None, password=None, transport: str = "tcp",
                ) -> Client:
    cid = client_id if client_id is not None else unique_id("paho")
    kwargs = dict(callback_api_version=mqtt.CallbackAPIVersion.VERSION2, client_id=cid,
                  protocol=protocol, transport=transport)
    if protocol != MQTTv5:
        kwargs["clean_session"] = clean
    c = mqtt.Client(**kwargs)
    if username is not None:
        c.username_pw_set(username, password)
    return Client(c, protocol)


def connect(port: int, username: Optional[str] = None, password=None,
            client_id: Optional[str] = None, protocol=MQTTv311, clean: bool = True,
            keepalive: int = 30, timeout: float = 5.0, session_expiry: Optional[int] = None,
            will: Optional[dict] = None, tls: Optional[dict] = None, transport: str = "tcp",
            ws_path: str = "/mqtt", host: str = "127.0.0.1", expect_fail: bool = False) -> Client:
    """Connect a paho client and start its loop; returns a Client.

    protocol: MQTTv311 or MQTTv5. clean: clean_session (3.1.1) / clean_start (5).
    session_expiry: MQTT 5 Session Expiry Interval property.
    will: dict(topic=..., payload=..., qos=0, retain=False).
    tls: dict(ca_certs=..., certfile=None, keyfile=None) to enable TLS.
    Raises ConnectRefused when the broker refuses (or does not answer), unless
    expect_fail=True, in which case the (disconnected) Client is returned.
    """
    cl = make_client(client_id, protocol, clean, username, password, transport)
    c = cl.c
    c.reconnect_delay_set(60, 120)  # never auto-reconnect during a test
    if will:
        c.will_set(will["topic"], will.get("payload"), will.get("qos", 0), will.get("retain", False))
    if tls:
        c.tls_set(ca_certs=tls.get("ca_certs"), certfile=tls.get("certfile"),
                  keyfile=tls.get("keyfile"))
    if transport == "websockets":
        c.ws_set_options(path=ws_path)
    props = None
    kw = {}
    if protocol == MQTTv5:
        props = Properties(PacketTypes.CONNECT)
        if session_expiry is not None:
            props.SessionExpiryInterval = session_expiry
        kw = dict(clean_start=clean, properties=props)
    try:
        c.connect(host, port, keepalive=keepalive, **kw)
    except OSError as exc:
        if expect_fail:
            return cl
        raise ConnectRefused(None, f"socket: {exc}") from None
    c.loop_start()
    got = cl.connack.wait(timeout)
    if not got:
        c.loop_stop()
        try:
            c.socket() and c.socket().close()
        except Exception:  # noqa: BLE001
            pass
        if expect_fail:
            return cl
        raise ConnectRefused(None, "no CONNACK")
    rc = cl.connect_rc
    failed = getattr(rc, "is_failure", None)
    failed = failed if failed is not None else (int(rc) != 0)
    if failed:
        c.loop_stop()
        if expect_fail:
            return cl
        raise ConnectRefused(rc_value(rc), str(rc))
    return cl


def rc_value(rc) -> Optional[int]:
    """Numeric value of a paho ReasonCode / int (3.1.1 CONNACK rc is mapped by paho to
    MQTT 5 style codes; use connack_code() for the wire value)."""
    if rc is None:
        return None
    return getattr(rc, "value", rc)


def try_connect(port: int, **kw):
    """(ok: bool, reason code value or None) for a connect attempt."""
    cl = connect(port, expect_fail=True, **kw)
    rc = cl.connect_rc
    if rc is None:
        return False, None
    failed = getattr(rc, "is_failure", None)
    failed = failed if failed is not None else (int(rc) != 0)
    if not failed:
        cl.disconnect_wait()
        return True, 0
    return False, rc_value(rc)


def pub(port: int, topic: str, payload=b"", qos: int = 0, retain: bool = False,
        username: Optional[str] = None, password=None, protocol=MQTTv311, **kw) -> None:
    """Connect, publish (waiting for completion), disconnect."""
    cl = connect(port, username=username, password=password, protocol=protocol, **kw)
    try:
        cl.publish_wait(topic, payload, qos=qos, retain=retain)
    finally:
        cl.disconnect_wait()


def sub(port: int, topic, qos: int = 0, username: Optional[str] = None, password=None,
        protocol=MQTTv311, **kw) -> Client:
    """Connect and subscribe (waiting for SUBACK); returns the Client. The caller
    disconnects it (the client_factory fixture does it automatically)."""
    cl = connect(port, username=username, password=password, protocol=protocol, **kw)
    codes = cl.subscribe_wait(topic, qos)
    cl.granted = codes
    return cl


# --------------------------------------------------------------------------- YAML helpers

def broker_yaml(name: str, port: int, extra: str = "", listeners: Optional[str] = None) -> str:
    """A minimal Broker document with one plain listener on 127.0.0.1:port.
    extra: further lines of spec (indented by 2 spaces already, e.g. "  allowAnonymous: true")."""
    ls = listeners or f"    - {{name: mqtt, port: {port}, bindAddress: 127.0.0.1}}"
    text = (f"apiVersion: edgemq.io/v1alpha1\nkind: Broker\nmetadata: {{name: {name}}}\n"
            f"spec:\n  listeners:\n{ls}\n")
    if extra:
        text += extra.rstrip("\n") + "\n"
    return text


def user_yaml(name: str, broker: str, password_hash: Optional[str] = None,
              acl: Optional[list] = None, username: Optional[str] = None,
              secret_ref: Optional[tuple] = None) -> str:
    """An MqttUser document. acl: list of (topic, access) tuples."""
    lines = ["apiVersion: edgemq.io/v1alpha1", "kind: MqttUser", f"metadata: {{name: {name}}}",
             "spec:", f"  brokerRef: {broker}"]
    if username is not None:
        lines.append(f"  username: {json.dumps(username)}")
    if password_hash is not None:
        lines.append(f"  passwordHash: {json.dumps(password_hash)}")
    if secret_ref is not None:
        lines.append(f"  passwordSecretRef: {{name: {secret_ref[0]}, key: {secret_ref[1]}}}")
    if acl:
        lines.append("  acl:")
        for topic, access in acl:
            lines.append(f"    - {{topic: {json.dumps(topic)}, access: {access}}}")
    return "\n".join(lines) + "\n"


def docs(*parts: str) -> str:
    """Join YAML documents with '---'."""
    return "---\n".join(p if p.endswith("\n") else p + "\n" for p in parts)


# Known answer from Mosquitto 2.0's format: alice / secret1.
ALICE_HASH = ("$7$101$qKSz0fyQacdTZ9HB$If/JbDtgTExFDBNmWitmhEReV5nR415+Z0sGyz5/w3xtjXL"
              "mRigZrJPRATCjNC+TE2hwhkAwJuKCX/NjaVU4kw==")


def edgemq_hash(tmp_path: Path, user: str, password: str) -> str:
    """A password hash made by `edgemq passwd -c -b`."""
    f = Path(tmp_path) / f"hash-{user}-{unique_id('h')}"
    r = run([edgemq_bin(), "passwd", "-c", "-b", f, user, password])
    assert r.returncode == 0, f"edgemq passwd failed: {r.stdout}{r.stderr}"
    line = [l for l in f.read_text().splitlines() if l.startswith(user + ":")][0]
    return line.split(":", 1)[1]


def mosquitto_hash(tmp_path: Path, user: str, password: str) -> str:
    """A password hash made by the real `mosquitto_passwd -c -b`."""
    mp = require("mosquitto_passwd")
    f = Path(tmp_path) / f"mhash-{user}-{unique_id('h')}"
    r = run([mp, "-c", "-b", f, user, password])
    assert r.returncode == 0, f"mosquitto_passwd failed: {r.stdout}{r.stderr}"
    line = [l for l in f.read_text().splitlines() if l.startswith(user + ":")][0]
    return line.split(":", 1)[1]


# --------------------------------------------------------------------------- raw MQTT bytes
# The one raw layer lives in mqtt_raw (standard library only); re-exported here.
from mqtt_raw import (  # noqa: E402,F401
    topic_matches_filter, _varint, _mqtt_str, packet, connect_packet, publish_packet,
    subscribe_packet, mqtt_str, read_packet, read_until, closed_by_peer, nothing_more,
    raw_connect, can_login, qos1_publish, read_publishes, RawConn, DISCONNECT,
)


def raw_connack(port: int, client_id: Optional[str] = None, username=None, password=None,
                v5: bool = False, clean: bool = True, close_timeout: float = 5.0) -> tuple:
    """(the whole CONNACK as (type, flags, body), whether the broker then closes the
    connection within close_timeout) for a raw CONNECT."""
    with RawConn(port) as c:
        c.send(connect_packet(client_id or unique_id("raw"), clean=clean, username=username,
                              password=password, v5=v5))
        ack = c.read_packet()
        return ack, c.closed_by_peer(close_timeout)


def connack_code(port: int, username=None, password=None, v5: bool = False,
                 client_id: str = "") -> Optional[int]:
    """The wire CONNACK code (3.1.1 return code or MQTT 5 reason code) for a raw CONNECT;
    None if the broker closes without a CONNACK."""
    with RawConn(port) as rc:
        try:
            return rc.connect(client_id or unique_id("raw"), v5=v5, username=username,
                              password=password)
        except (ConnectionError, OSError):
            return None


# --------------------------------------------------------------------------- bursts
def publish_many(port: int, n: int, topic: str = "sensors/x", connack_timeout: float = 5.0,
                 publish_timeout: float = 60.0) -> None:
    """n QoS 1 messages, payloads "0".."n-1", in order, 200 in flight, each acknowledged."""
    cl = make_client(unique_id("burst"))
    cl.c.max_inflight_messages_set(200)
    cl.c.max_queued_messages_set(0)
    cl.c.connect("127.0.0.1", port)
    cl.c.loop_start()
    assert cl.connack.wait(connack_timeout), f"no CONNACK from 127.0.0.1:{port}"
    infos = [cl.c.publish(topic, str(i).encode(), qos=1) for i in range(n)]
    for info in infos:
        info.wait_for_publish(publish_timeout)
        assert info.is_published()
    cl.disconnect_wait()


def check_in_order(payloads: list, n: int) -> tuple:
    """(losses, duplicates) of payloads "0".."n-1"; asserts first deliveries come in order."""
    seen, first = set(), []
    dups = 0
    for p in payloads:
        i = int(p)
        if i in seen:
            dups += 1
            continue
        seen.add(i)
        first.append(i)
    assert first == sorted(first), "messages arrived out of order"
    return n - len(seen), dups

