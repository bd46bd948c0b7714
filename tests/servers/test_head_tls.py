"""Who the head-node service trusts (seed scenario 3): only the SyncConfig's workers send,
and only to the real head.

The head serves HTTPS with the certificate of its SyncConfig's Secret; a worker checks it
against that Secret's CA certificate and the head's host name, so a server that cannot
prove it is the head (another certificate, or plain HTTP) is sent nothing, the token
included. A sender without the SyncConfig's token is refused. Real sidecar processes and
a real receiver; the identities are made as the operator makes them
(``certificates.new_material``, the CA's key dropped), for ``localhost``.
"""

from __future__ import annotations

import datetime
import pathlib
import socket
import socketserver
import threading
from collections.abc import Iterator

import aiohttp
import pytest

from localcluster.processes import free_port
from tests.support import trials
from tests.support.head_service import Receiver, tree
from tests.support.sidecar_process import Sidecar, wait_for
from trialsync._head.store import HeadNotTrusted, HeadStore
from trialsync._util import tls
from trialsync.metrics import Metrics
from trialsync_operator.tls import certificates

pytestmark = pytest.mark.timeout(120)

TOKEN = "the-syncconfig-token"
OTHER_TOKEN = "another-syncconfigs-token"
TRIAL = "exp/trial_00000"


def identity(directory: pathlib.Path, token: str = TOKEN) -> pathlib.Path:
    """A head-node Secret's files in ``directory``: token, tls.crt, tls.key, ca.crt."""
    directory.mkdir(parents=True)
    material = certificates.new_material(
        ["localhost"], datetime.timedelta(days=1), datetime.datetime.now(datetime.UTC)
    )
    (directory / "token").write_text(token)
    (directory / "tls.crt").write_bytes(material.cert)
    (directory / "tls.key").write_bytes(material.key)
    (directory / "ca.crt").write_bytes(material.ca_bundle)
    return directory


def start_head(
    tmp_path: pathlib.Path, sidecars: list[Sidecar], secret: pathlib.Path | None, name: str
) -> tuple[str, pathlib.Path, Sidecar]:
    """A head sidecar serving ``secret``'s certificate (None: plain HTTP); its URL by the
    name its certificate covers, its root."""
    root = tmp_path / name
    root.mkdir()
    port = free_port()
    args = ["--role", "head", "--root", str(root), "--receiver-addr", f"127.0.0.1:{port}"]
    if secret is not None:
        args += ["--receiver-cert-file", str(secret / "tls.crt")]
        args += ["--receiver-key-file", str(secret / "tls.key")]
        args += ["--head-token-file", str(secret / "token")]
        env = {}
    else:
        env = {"TRIALSYNC_HEAD_TOKEN": TOKEN}
    sidecar = Sidecar.start(args, env, str(tmp_path / f"{name}.log"))
    sidecars.append(sidecar)
    scheme = "https" if secret is not None else "http"
    return f"{scheme}://localhost:{port}", root, sidecar


def start_worker(
    tmp_path: pathlib.Path,
    sidecars: list[Sidecar],
    head_url: str,
    secret: pathlib.Path,
    name: str = "worker",
) -> tuple[Sidecar, pathlib.Path]:
    """A worker with a trial dir, sending to ``head_url`` with ``secret``'s token and CA
    certificate, as the operator injects it."""
    root = tmp_path / name
    trials.trial(root / "exp")
    args = ["--root", str(root), "--head-url", head_url, "--sync-period", "1"]
    args += ["--head-ca-file", str(secret / "ca.crt"), "--head-token-file", str(secret / "token")]
    env = {"TRIALSYNC_HEAD_IDENTITY_FILE": str(tmp_path / f"{name}-scratch" / "identity.json")}
    sidecar = Sidecar.start(args, env, str(tmp_path / f"{name}.log"))
    sidecars.append(sidecar)
    return sidecar, root


@pytest.fixture
def secret(tmp_path: pathlib.Path) -> pathlib.Path:
    return identity(tmp_path / "secret")


def test_a_worker_sends_to_the_real_head_over_tls(
    tmp_path: pathlib.Path, sidecars: list[Sidecar], secret: pathlib.Path
) -> None:
    head_url, head_root, _ = start_head(tmp_path, sidecars, secret, "head")
    worker, root = start_worker(tmp_path, sidecars, head_url, secret)
    wait_for(lambda: worker.get("/readyz")[0] == 200, 20, what="the worker's first sync")
    result = head_root / TRIAL / "result.json"
    wait_for(result.exists, 10, what="the trial dir on the head")
    (root / TRIAL / "result.json").write_bytes(b'{"loss": 0.1}\n')
    wait_for(lambda: result.read_bytes() == b'{"loss": 0.1}\n', 10, what="the next sync")
    assert (head_root / TRIAL / "params.json").read_bytes() == b'{"lr": 0.01}'
    assert worker.metric("trialsync_head_refusals_total") == 0


def test_the_head_serves_no_plain_http(
    tmp_path: pathlib.Path, sidecars: list[Sidecar], secret: pathlib.Path
) -> None:
    head_url, _, _ = start_head(tmp_path, sidecars, secret, "head")
    port = int(head_url.rpartition(":")[2])

    def listening() -> bool:
        try:
            socket.create_connection(("127.0.0.1", port), timeout=5).close()
        except OSError:
            return False
        return True

    # The receiver listens a moment after the process starts (longer on a busy machine).
    wait_for(listening, 30, what="the head's receiver listening")
    with socket.create_connection(("127.0.0.1", port), timeout=30) as conn:
        conn.sendall(b"GET /healthz HTTP/1.1\r\nHost: localhost\r\nConnection: close\r\n\r\n")
        answer = b""
        while chunk := conn.recv(4096):
            answer += chunk
    assert not answer.startswith(b"HTTP/"), answer[:100]


def test_a_head_with_another_certificate_receives_nothing(
    tmp_path: pathlib.Path, sidecars: list[Sidecar], secret: pathlib.Path
) -> None:
    # The imposter even knows the token: what it lacks is the real head's key.
    imposter_secret = identity(tmp_path / "imposter-secret", TOKEN)
    url, imposter_root, imposter = start_head(tmp_path, sidecars, imposter_secret, "imposter")
    worker, _ = start_worker(tmp_path, sidecars, url, secret)
    wait_for(lambda: worker.metric("trialsync_head_refusals_total") >= 1, 20, what="the refusal")
    assert worker.get("/readyz")[0] == 503
    log = worker.log()
    assert "not the head-node service" in log
    assert "CERTIFICATE_VERIFY_FAILED" in log
    assert tree(imposter_root) == {}
    assert "worker registered" not in imposter.log()


class Recorder(socketserver.ThreadingTCPServer):
    """A plain-HTTP server that answers every request with 201 and records every byte."""

    daemon_threads = True
    allow_reuse_address = True

    def __init__(self) -> None:
        self.received = bytearray()
        self.lock = threading.Lock()
        super().__init__(("127.0.0.1", 0), _RecordingHandler)


class _RecordingHandler(socketserver.BaseRequestHandler):
    def handle(self) -> None:
        server = self.server
        assert isinstance(server, Recorder)
        self.request.settimeout(5)
        try:
            data = self.request.recv(65536)
        except OSError:
            return
        with server.lock:
            server.received += data
        body = b'{"id": "w-000000000000", "identity": "w-000000000000.mac", "objects": {}}'
        head = f"HTTP/1.1 201 Created\r\nContent-Length: {len(body)}\r\n"
        self.request.sendall(head.encode() + b"Content-Type: application/json\r\n\r\n" + body)


@pytest.fixture
def recorder() -> Iterator[Recorder]:
    server = Recorder()
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    yield server
    server.shutdown()
    server.server_close()


def test_a_plain_http_server_at_the_heads_address_is_sent_no_token(
    tmp_path: pathlib.Path, sidecars: list[Sidecar], secret: pathlib.Path, recorder: Recorder
) -> None:
    url = f"https://localhost:{recorder.server_address[1]}"
    worker, _ = start_worker(tmp_path, sidecars, url, secret)
    wait_for(lambda: worker.metric("trialsync_head_refusals_total") >= 1, 20, what="the refusal")
    assert worker.get("/readyz")[0] == 503
    assert "not the head-node service" in worker.log()
    with recorder.lock:
        received = bytes(recorder.received)
    assert received, "the worker never connected: the test proves nothing"
    assert received[:1] == b"\x16"  # a TLS handshake record, the only thing it was sent
    assert TOKEN.encode() not in received
    assert b"Authorization" not in received
    assert b"trial_00000" not in received


def test_a_worker_of_another_syncconfig_is_refused(
    tmp_path: pathlib.Path, sidecars: list[Sidecar], secret: pathlib.Path
) -> None:
    head_url, head_root, _ = start_head(tmp_path, sidecars, secret, "head")
    # It trusts this head's CA (say it got hold of ca.crt, which is no secret), but holds
    # its own SyncConfig's token.
    other = tmp_path / "other-secret"
    other.mkdir()
    (other / "token").write_text(OTHER_TOKEN)
    (other / "ca.crt").write_bytes((secret / "ca.crt").read_bytes())
    worker, _ = start_worker(tmp_path, sidecars, head_url, other)
    wait_for(lambda: worker.metric("trialsync_sync_failures_total") >= 1, 20, what="a failed sync")
    assert worker.get("/readyz")[0] == 503
    assert "HTTP 401" in worker.log()
    assert tree(head_root) == {}


async def test_a_sender_without_the_token_or_with_another_is_refused(
    tmp_path: pathlib.Path, secret: pathlib.Path
) -> None:
    context = tls.server_context(str(secret / "tls.crt"), str(secret / "tls.key"))
    head = await Receiver.start(tmp_path / "head", tls=context, token=TOKEN)
    trusted = aiohttp.TCPConnector(ssl=tls.client_context(str(secret / "ca.crt")))
    try:
        async with aiohttp.ClientSession(connector=trusted) as session:
            register = f"{head.url}/v1/register"
            for headers in ({}, {"Authorization": f"Bearer {OTHER_TOKEN}"}):
                async with session.post(register, json={"name": "x"}, headers=headers) as r:
                    assert r.status == 401, headers
                async with session.put(head.objects(f"{TRIAL}/x"), data=b"x", headers=headers) as r:
                    assert r.status == 401, headers
            # The same request with the token is taken: the refusals were the token's.
            ok = {"Authorization": f"Bearer {TOKEN}"}
            async with session.post(register, json={"name": "x"}, headers=ok) as r:
                assert r.status == 201
        assert tree(head.root) == {}
    finally:
        await head.stop()


async def test_the_certificate_is_checked_against_the_heads_name(
    tmp_path: pathlib.Path, secret: pathlib.Path
) -> None:
    # The real head's certificate, reached by a name it does not cover (127.0.0.1): refused
    # at once (no retries), before the token is sent.
    context = tls.server_context(str(secret / "tls.crt"), str(secret / "tls.key"))
    head = await Receiver.start(tmp_path / "head", tls=context, token=TOKEN)
    metrics = Metrics()
    by_address = HeadStore(
        f"https://127.0.0.1:{head.port}",
        TOKEN,
        metrics=metrics,
        ssl_context=tls.client_context(str(secret / "ca.crt")),
    )
    by_name = HeadStore(head.url, TOKEN, ssl_context=tls.client_context(str(secret / "ca.crt")))
    try:
        with pytest.raises(HeadNotTrusted, match="did not prove it is the head-node service"):
            await by_address.connect()
        assert metrics.head_refusals.labels("not_trusted")._value.get() == 1
        assert metrics.head_busy_retries._value.get() == 0
        await by_name.connect()  # the same head, by its name
        await by_name.put_bytes(f"{TRIAL}/x", b"x")
        assert tree(head.root) == {f"{TRIAL}/x": b"x"}
    finally:
        await by_address.close()
        await by_name.close()
        await head.stop()
