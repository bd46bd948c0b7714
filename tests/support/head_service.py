"""The head-node service on loopback for tests: a real receiver, real HTTP, real files.

Fixtures: ``head``, a started :class:`Receiver` over the test's ``root`` (tests that need
other limits, or a restart, start their own with :meth:`Receiver.start`), and ``session``,
an aiohttp client.
"""

from __future__ import annotations

import asyncio
import dataclasses
import json
import pathlib
from collections.abc import AsyncIterator
from typing import Any

import aiohttp
import pytest
from aiohttp import web

from trialsync._head import receiver as head_receiver
from trialsync._head.protocol import REGISTER_PATH

TOKEN = "s3cret-token"
SHARED = {"Authorization": f"Bearer {TOKEN}"}


def options(root: pathlib.Path, **overrides: Any) -> head_receiver.ReceiverOptions:
    """Generous limits and a short idle timeout (stalled uploads end quickly)."""
    values: dict[str, Any] = {
        "token": TOKEN,
        "state_dir": str(root / ".trialsync-head"),
        "max_object_size": 1 << 30,
        "max_uploads": 64,
        "claim_lease": 600.0,
        "idle_timeout": 1.0,
    }
    values.update(overrides)
    return head_receiver.ReceiverOptions(**values)


@dataclasses.dataclass
class Receiver:
    root: pathlib.Path
    runner: web.AppRunner
    port: int
    #: How a client names the host: with TLS, a name the certificate covers.
    host: str = "127.0.0.1"
    scheme: str = "http"

    @classmethod
    async def start(cls, root: pathlib.Path, port: int = 0, **overrides: Any) -> Receiver:
        """Serve ``root`` on 127.0.0.1 (``port`` 0 picks one) once its start-up is done;
        over TLS with ``tls=`` an SSL context (its certificate for ``localhost``)."""
        served = options(root, **overrides)
        app = head_receiver.make_app(str(root), served)
        runner = web.AppRunner(app, shutdown_timeout=1.0)
        await runner.setup()
        site = web.TCPSite(runner, "127.0.0.1", port, ssl_context=served.tls)
        await site.start()
        bound = site._server.sockets[0].getsockname()[1]  # type: ignore[union-attr]
        if served.tls is not None:
            return cls(root, runner, bound, host="localhost", scheme="https")
        return cls(root, runner, bound)

    @property
    def url(self) -> str:
        return f"{self.scheme}://{self.host}:{self.port}"

    def objects(self, rel: str = "") -> str:
        return f"{self.url}/v1/objects/{rel}" if rel else f"{self.url}/v1/objects"

    async def stop(self) -> None:
        await self.runner.cleanup()

    async def register(self, name: str = "worker") -> dict[str, str]:
        """``Authorization`` headers carrying a new identity."""
        async with aiohttp.ClientSession() as client:
            body = {"name": name}
            async with client.post(self.url + REGISTER_PATH, json=body, headers=SHARED) as r:
                assert r.status == 201, await r.text()
                identity = (await r.json())["identity"]
        return {"Authorization": f"Bearer {identity}"}


@pytest.fixture
async def head(root: pathlib.Path) -> AsyncIterator[Receiver]:
    receiver = await Receiver.start(root)
    yield receiver
    await receiver.stop()


@pytest.fixture
async def session() -> AsyncIterator[aiohttp.ClientSession]:
    async with aiohttp.ClientSession(timeout=aiohttp.ClientTimeout(total=10)) as client:
        yield client


async def raw_request(
    port: int,
    method: str,
    target: str,
    headers: dict[str, str] | None = None,
    body: bytes = b"",
) -> tuple[int, bytes]:
    """Send exactly ``target`` (no client-side path normalisation); status and body."""
    head = {"Host": "127.0.0.1", "Connection": "close", "Content-Length": str(len(body))}
    head.update(headers or {})
    reader, writer = await asyncio.open_connection("127.0.0.1", port)
    lines = "".join(f"{k}: {v}\r\n" for k, v in head.items())
    writer.write(f"{method} {target} HTTP/1.1\r\n{lines}\r\n".encode() + body)
    response = await asyncio.wait_for(reader.read(), 5)
    writer.close()
    status_line, _, rest = response.partition(b"\r\n")
    return int(status_line.split()[1]), rest.partition(b"\r\n\r\n")[2]


async def open_put(
    port: int, rel: str, auth: dict[str, str], headers: dict[str, str], body: bytes = b""
) -> tuple[asyncio.StreamReader, asyncio.StreamWriter]:
    """A PUT with ``headers`` and the start of a body, on a raw connection left open."""
    reader, writer = await asyncio.open_connection("127.0.0.1", port)
    lines = "".join(f"{k}: {v}\r\n" for k, v in {**auth, **headers}.items())
    writer.write(f"PUT /v1/objects/{rel} HTTP/1.1\r\nHost: x\r\n{lines}\r\n".encode() + body)
    await writer.drain()
    return reader, writer


async def read_answer(reader: asyncio.StreamReader) -> tuple[int, dict[str, str], Any]:
    """The status, headers and JSON body of the next answer on a raw connection.

    A ``100 Continue`` is returned as such (status 100, no body).
    """
    async with asyncio.timeout(5):
        status = int((await reader.readline()).split()[1])
        headers: dict[str, str] = {}
        while (line := await reader.readline()) not in (b"\r\n", b""):
            key, _, value = line.decode().partition(":")
            headers[key.strip().lower()] = value.strip()
        length = int(headers.get("content-length", "0"))
        body = await reader.readexactly(length) if length else b""
    return status, headers, json.loads(body) if body else None


def tree(path: pathlib.Path, skip: str = ".trialsync-head") -> dict[str, bytes]:
    """Every regular file below ``path`` (hidden ones included, the state dir not)."""
    return {
        p.relative_to(path).as_posix(): p.read_bytes()
        for p in path.rglob("*")
        if p.is_file() and not p.is_symlink() and skip not in p.relative_to(path).parts
    }


async def eventually_equal(path: pathlib.Path, expected: dict[str, bytes]) -> None:
    """The server cleans up after its handler sees the disconnect; give it a moment."""
    for _ in range(100):
        if tree(path) == expected:
            return
        await asyncio.sleep(0.05)
    assert tree(path) == expected
