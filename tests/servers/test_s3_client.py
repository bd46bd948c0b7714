"""The lean S3 client against a real S3 server (SeaweedFS): signing, listing, errors, retries."""

from __future__ import annotations

import asyncio
import os
import pathlib
import ssl
from collections.abc import AsyncIterator, Callable
from typing import Any

import pytest
import trustme
from aiohttp import web
from botocore.credentials import Credentials

from tests.support.fault_proxy import FaultProxy
from trialsync._stores import http1, s3_client, s3_upload
from trialsync._stores.s3_client import S3Client, S3Error


@pytest.fixture
async def client(seaweedfs: Any) -> AsyncIterator[S3Client]:
    made = S3Client(
        seaweedfs.endpoint_url,
        "us-east-1",
        Credentials(seaweedfs.access_key, seaweedfs.secret_key),
        path_style=True,
    )
    yield made
    await made.close()


@pytest.fixture
def proxied(
    seaweedfs: Any, stall_proxy_factory: Callable[[str, int], FaultProxy]
) -> tuple[FaultProxy, S3Client]:
    host, port = seaweedfs.endpoint_url.rsplit("//", 1)[1].split(":")
    proxy = stall_proxy_factory(host, int(port))
    credentials = Credentials(seaweedfs.access_key, seaweedfs.secret_key)
    client = S3Client(
        proxy.endpoint_url, "us-east-1", credentials, path_style=True, retry_base=0.01
    )
    return proxy, client


async def test_objects_land_and_list_page_by_page(seaweedfs: Any, client: S3Client) -> None:
    bucket = seaweedfs.make_bucket()
    keys = {"p/a.txt": b"a", "p/b c+d=e,f.bin": b"bb", "p/sub/ü.txt": b"ccc", "q/other": b"x"}
    for key, body in keys.items():
        etag = await client.put_object(bucket, key, body)
        assert etag.strip('"')
    requests: list[str] = []
    send = client._request

    async def counted(method: str, *args: Any) -> Any:
        requests.append(method)
        return await send(method, *args)

    client._request = counted  # type: ignore[method-assign]
    listed = [item async for item in client.list_objects(bucket, "p/", page_size=2)]
    assert requests == ["GET", "GET"]  # three objects, two to a page
    assert {item.key: item.size for item in listed} == {
        key: len(body) for key, body in keys.items() if key.startswith("p/")
    }
    assert all(item.mtime and item.etag for item in listed)
    landed = seaweedfs.client().get_object(Bucket=bucket, Key="p/b c+d=e,f.bin")["Body"].read()
    assert landed == b"bb"


async def test_delete_removes_an_object_and_ignores_a_missing_one(
    seaweedfs: Any, client: S3Client
) -> None:
    bucket = seaweedfs.make_bucket()
    await client.put_object(bucket, "a b+c", b"x")
    await client.delete_object(bucket, "a b+c")
    await client.delete_object(bucket, "never-there")
    assert [item async for item in client.list_objects(bucket, "")] == []


async def test_multipart_upload_assembles_the_parts(seaweedfs: Any, client: S3Client) -> None:
    bucket = seaweedfs.make_bucket()
    parts = [bytes([n]) * (5 * 2**20) for n in range(2)] + [b"tail"]
    upload_id = await client.create_multipart_upload(bucket, "big.bin")
    etags = {
        n: await client.upload_part(bucket, "big.bin", upload_id, n, body)
        for n, body in enumerate(parts, start=1)
    }
    await client.complete_multipart_upload(bucket, "big.bin", upload_id, etags)
    body = seaweedfs.client().get_object(Bucket=bucket, Key="big.bin")["Body"].read()
    assert body == b"".join(parts)


async def test_an_aborted_upload_cannot_be_completed(seaweedfs: Any, client: S3Client) -> None:
    bucket = seaweedfs.make_bucket()
    upload_id = await client.create_multipart_upload(bucket, "gone.bin")
    etag = await client.upload_part(bucket, "gone.bin", upload_id, 1, b"x")
    await client.abort_multipart_upload(bucket, "gone.bin", upload_id)
    with pytest.raises(FileNotFoundError, match="NoSuchUpload"):
        await client.complete_multipart_upload(bucket, "gone.bin", upload_id, {1: etag})


async def test_a_missing_bucket_is_file_not_found(client: S3Client) -> None:
    # A listing: SeaweedFS creates a missing bucket on PUT.
    with pytest.raises(FileNotFoundError, match="GET s3://no-such-bucket-here/: HTTP 404 No"):
        _ = [item async for item in client.list_objects("no-such-bucket-here", "")]


async def test_a_wrong_secret_is_a_permission_error(seaweedfs: Any) -> None:
    bucket = seaweedfs.make_bucket()
    wrong = S3Client(
        seaweedfs.endpoint_url, "us-east-1", Credentials(seaweedfs.access_key, "wrong"), True
    )
    try:
        with pytest.raises(PermissionError, match="HTTP 403 SignatureDoesNotMatch"):
            await wrong.put_object(bucket, "k", b"x")
    finally:
        await wrong.close()


async def test_throttled_requests_are_retried(
    seaweedfs: Any, proxied: tuple[FaultProxy, S3Client]
) -> None:
    proxy, client = proxied
    bucket = seaweedfs.make_bucket()
    proxy.throttle(2)
    try:
        await client.put_object(bucket, "k", b"survived")
    finally:
        await client.close()
    assert proxy.throttled == 2
    assert seaweedfs.client().get_object(Bucket=bucket, Key="k")["Body"].read() == b"survived"


async def test_throttling_that_persists_is_reported(
    seaweedfs: Any, proxied: tuple[FaultProxy, S3Client]
) -> None:
    proxy, client = proxied
    bucket = seaweedfs.make_bucket()
    proxy.throttle(100)
    try:
        with pytest.raises(S3Error, match="HTTP 503 SlowDown: Please reduce") as caught:
            await client.put_object(bucket, "k", b"x")
    finally:
        await client.close()
    assert caught.value.status == 503
    assert proxy.throttled == s3_client.ATTEMPTS


async def test_a_stalled_body_write_ends_at_the_write_timeout_and_is_retried(
    seaweedfs: Any, stall_proxy_factory: Callable[[str, int], FaultProxy]
) -> None:
    host, port = seaweedfs.endpoint_url.rsplit("//", 1)[1].split(":")
    proxy = stall_proxy_factory(host, int(port))
    credentials = Credentials(seaweedfs.access_key, seaweedfs.secret_key)
    # aiohttp bounds reading the answer (read_timeout) but not sending the body: a peer
    # that stops reading held the request until the sync's own timeout.
    client = S3Client(
        proxy.endpoint_url, "us-east-1", credentials, True, retry_base=0.01, write_timeout=1
    )
    bucket = seaweedfs.make_bucket()
    proxy.stall()  # accepts connections, reads nothing: the socket buffers fill up
    started = asyncio.get_running_loop().time()
    try:
        with pytest.raises(OSError, match=r"PUT s3://.*/k"):
            # The outer bound only keeps a regression from hanging the suite.
            await asyncio.wait_for(client.put_object(bucket, "k", bytes(32 * 2**20)), 60)
    finally:
        proxy.resume()
        await client.close()
    took = asyncio.get_running_loop().time() - started
    # Each attempt ends a second after the last byte went out; five attempts in all.
    assert took < 30, f"took {took:.1f}s"
    assert proxy.connections_accepted == s3_client.ATTEMPTS


class RecordingApi:
    """The real client, recording the uploads it created and aborted."""

    def __init__(self, client: S3Client) -> None:
        self.client = client
        self.created: list[str] = []
        self.aborted: list[str] = []
        self.any_aborted = asyncio.Event()

    async def create_multipart_upload(self, bucket: str, key: str) -> str:
        upload_id = await self.client.create_multipart_upload(bucket, key)
        self.created.append(upload_id)
        return upload_id

    async def abort_multipart_upload(self, bucket: str, key: str, upload_id: str) -> None:
        await self.client.abort_multipart_upload(bucket, key, upload_id)
        self.aborted.append(upload_id)
        self.any_aborted.set()

    def __getattr__(self, name: str) -> Any:
        return getattr(self.client, name)


async def test_an_upload_cancelled_while_being_created_is_aborted_once_created(
    seaweedfs: Any, proxied: tuple[FaultProxy, S3Client], tmp_path: pathlib.Path
) -> None:
    proxy, client = proxied
    bucket = seaweedfs.make_bucket()
    big = tmp_path / "model.pt"
    big.write_bytes(os.urandom(12 * 2**20))
    api = RecordingApi(client)
    proxy.stall()  # CreateMultipartUpload hangs
    upload = asyncio.create_task(
        s3_upload.put_file(api, str(big), bucket, "model.pt", 12 * 2**20, 5 * 2**20, 2)
    )
    await asyncio.sleep(0.3)
    upload.cancel()
    with pytest.raises(asyncio.CancelledError):
        await upload
    proxy.resume()  # the store creates the upload after all
    try:
        await asyncio.wait_for(api.any_aborted.wait(), timeout=10)
    finally:
        await client.close()
    assert len(api.created) == 1
    assert api.aborted == api.created
    assert not seaweedfs.client().list_multipart_uploads(Bucket=bucket).get("Uploads")


async def test_a_bucket_in_another_region_is_followed_once(
    aiohttp_wrong_region: tuple[str, list[str]],
) -> None:
    endpoint, scopes = aiohttp_wrong_region
    client = S3Client(endpoint, "us-east-1", Credentials("AKID", "secret"), path_style=True)
    try:
        await client.put_object("bucket", "k", b"x")
        await client.put_object("bucket", "k2", b"y")  # remembered: no second detour
    finally:
        await client.close()
    assert scopes == ["us-east-1", "eu-west-1", "eu-west-1"]


@pytest.fixture
async def aiohttp_wrong_region() -> AsyncIterator[tuple[str, list[str]]]:
    """AWS's answer to a request signed for the wrong region, which SeaweedFS (one region)
    never gives: 400 AuthorizationHeaderMalformed naming the bucket's region."""
    scopes: list[str] = []

    async def handle(request: web.Request) -> web.Response:
        region = request.headers["Authorization"].split("/")[2]
        scopes.append(region)
        if region != "eu-west-1":
            body = (
                "<Error><Code>AuthorizationHeaderMalformed</Code><Message>the region "
                f"'{region}' is wrong; expecting 'eu-west-1'</Message>"
                "<Region>eu-west-1</Region></Error>"
            )
            return web.Response(status=400, text=body, headers={"x-amz-bucket-region": "eu-west-1"})
        return web.Response(status=200, headers={"ETag": '"e"'})

    app = web.Application()
    app.router.add_route("*", "/{tail:.*}", handle)
    runner = web.AppRunner(app)
    await runner.setup()
    site = web.TCPSite(runner, "127.0.0.1", 0)
    await site.start()
    port = site._server.sockets[0].getsockname()[1]  # type: ignore[union-attr]
    yield f"http://127.0.0.1:{port}", scopes
    await runner.cleanup()


async def test_every_path_of_the_client_works_over_tls(
    seaweedfs: Any, tmp_path: pathlib.Path
) -> None:
    """Small requests (http1.Pool), large bodies (aiohttp) and downloads (http1.FilePool),
    each over TLS to a real S3 server behind a TLS-terminating forwarder, verified against
    the forwarder's CA; a client that does not trust that CA is refused."""
    ca = trustme.CA()
    served = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
    ca.issue_cert("localhost").configure_cert(served)
    host, port = seaweedfs.endpoint_url.rsplit("//", 1)[1].split(":")

    async def forward(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        up_reader, up_writer = await asyncio.open_connection(host, int(port))

        async def pipe(src: asyncio.StreamReader, dst: asyncio.StreamWriter) -> None:
            try:
                while data := await src.read(2**16):
                    dst.write(data)
                    await dst.drain()
            except ConnectionError:
                pass
            finally:
                dst.close()

        await asyncio.gather(pipe(reader, up_writer), pipe(up_reader, writer))

    server = await asyncio.start_server(forward, "127.0.0.1", 0, ssl=served)
    endpoint = f"https://localhost:{server.sockets[0].getsockname()[1]}"
    trusting = ssl.create_default_context()
    ca.configure_trust(trusting)
    credentials = Credentials(seaweedfs.access_key, seaweedfs.secret_key)
    client = S3Client(endpoint, "us-east-1", credentials, True, ssl_context=trusting)
    stranger = S3Client(endpoint, "us-east-1", credentials, True, retry_base=0.01)
    bucket = seaweedfs.make_bucket()
    # Long enough to be spliced on a plain socket: over TLS it is read and written.
    large = os.urandom(max(s3_client.UNWATCHED_BODY * 3, http1.SPLICE_LEAST * 2) + 5)
    target = tmp_path / "down"
    fd = os.open(target, os.O_RDWR | os.O_CREAT)
    try:
        await client.put_object(bucket, "small", b"tiny")
        await client.put_object(bucket, "large", large)
        assert await client.get_object(bucket, "small") == b"tiny"
        assert await client.get_range_into(bucket, "large", 0, len(large), fd) == len(large)
        listed = {item.key: item.size async for item in client.list_objects(bucket, "")}
        with pytest.raises(OSError, match="CERTIFICATE_VERIFY_FAILED"):
            await stranger.put_object(bucket, "refused", b"x")
        # Each of the three transports carried a request.
        assert client._pools
        assert client._file_pools
        assert client._session is not None
    finally:
        os.close(fd)
        await client.close()
        await stranger.close()
        server.close()
    assert listed == {"small": 4, "large": len(large)}
    assert target.read_bytes() == large
