"""moto's server (an AWS API emulator) as a peer of the AWS IoT tests, standalone and on
the cluster: started per test on a free loopback port and stopped by pid; and a gate in
front of it that holds one AWS operation, so a test can stop edgemq halfway through."""

from __future__ import annotations

import http.client
import http.server
import subprocess
import threading

import support

REGION = "eu-west-1"
AWS_ENV = {
    "AWS_ACCESS_KEY_ID": "testing",
    "AWS_SECRET_ACCESS_KEY": "testing",
    "AWS_CONFIG_FILE": "/nonexistent/edgemq-e2e",
    "AWS_SHARED_CREDENTIALS_FILE": "/nonexistent/edgemq-e2e",
    "AWS_EC2_METADATA_DISABLED": "true",
}


class Moto:
    def __init__(self, root):
        self.port = support.free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        self.log = open(root / "moto.log", "ab")
        self.proc = subprocess.Popen(
            [support.require("moto_server", "moto[server] (pip)"), "-H", "127.0.0.1",
             "-p", str(self.port)],
            stdout=self.log, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL)
        support.wait_port(self.port, timeout=30)

    def client(self, service):
        try:
            import boto3  # comes with moto
        except ImportError:
            support._missing("boto3 not installed: pip install 'moto[server]'")
        return boto3.client(service, region_name=REGION, endpoint_url=self.url,
                            aws_access_key_id="testing", aws_secret_access_key="testing")

    def inventory(self):
        iot = self.client("iot")
        sm = self.client("secretsmanager")
        return {
            "things": sorted(t["thingName"] for t in iot.list_things()["things"]),
            "certificates": sorted((c["certificateId"], c["status"])
                                   for c in iot.list_certificates()["certificates"]),
            "policies": sorted(p["policyName"] for p in iot.list_policies()["policies"]),
            "secrets": sorted(s["Name"] for s in sm.list_secrets()["SecretList"]),
        }

    def stop(self):
        if self.proc.poll() is None:
            self.proc.terminate()
            try:
                self.proc.wait(timeout=10)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()
        self.log.close()


class Gate:
    """An HTTP proxy on a free loopback port in front of moto. While `closed`, a request
    `method` on a path starting with `prefix` is held (never forwarded) and `reached` is
    set: the caller is stuck in the middle of its work, as if AWS were slow to answer."""

    def __init__(self, moto: Moto, method: str, prefix: str):
        self.moto = moto
        self.method = method
        self.prefix = prefix
        self.closed = True
        self.reached = threading.Event()
        self._open = threading.Event()
        gate = self

        class Handler(http.server.BaseHTTPRequestHandler):
            protocol_version = "HTTP/1.1"

            def log_message(self, *args):
                pass

            def _forward(self):
                length = int(self.headers.get("Content-Length") or 0)
                body = self.rfile.read(length) if length else None
                if gate.closed and self.command == gate.method \
                        and self.path.startswith(gate.prefix):
                    gate.reached.set()
                    gate._open.wait(timeout=300)
                    self.close_connection = True
                    return
                conn = http.client.HTTPConnection("127.0.0.1", gate.moto.port, timeout=60)
                try:
                    headers = {k: v for k, v in self.headers.items()
                               if k.lower() not in ("connection", "keep-alive")}
                    conn.request(self.command, self.path, body=body, headers=headers)
                    r = conn.getresponse()
                    data = r.read()
                    self.send_response(r.status)
                    for k, v in r.getheaders():
                        if k.lower() not in ("content-length", "connection",
                                             "transfer-encoding", "keep-alive"):
                            self.send_header(k, v)
                    self.send_header("Content-Length", str(len(data)))
                    self.end_headers()
                    self.wfile.write(data)
                finally:
                    conn.close()

            do_GET = do_POST = do_PUT = do_DELETE = do_PATCH = do_HEAD = _forward

        self.server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.server.daemon_threads = True
        self.port = self.server.server_address[1]
        self.url = f"http://127.0.0.1:{self.port}"
        self._thread = threading.Thread(target=self.server.serve_forever, daemon=True)
        self._thread.start()

    def open(self) -> None:
        """Stops holding; held requests are dropped, unanswered."""
        self.closed = False
        self._open.set()

    def stop(self) -> None:
        self.open()
        self.server.shutdown()
        self.server.server_close()


def empty_inventory() -> dict:
    return {"things": [], "certificates": [], "policies": [], "secrets": []}
