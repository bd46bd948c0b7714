"""The object-store fixtures are real servers, and the stall proxy and peer CLIs work on them."""

from __future__ import annotations

import os
import socket
import subprocess
import time
import urllib.error
import urllib.request
from collections.abc import Callable
from pathlib import Path

import pytest

from localcluster.object_stores import GcsBucket, GcsServer, S3Bucket, S3Server
from tests.support import peers
from tests.support.fault_proxy import FaultProxy

MiB = 1024 * 1024
ProxyFactory = Callable[[str, int], FaultProxy]


def _host_port(url: str) -> tuple[str, int]:
    host, _, port = url.removeprefix("http://").partition(":")
    return host, int(port)


def _listening_address(url: str) -> str:
    host, port = _host_port(url)
    with socket.create_connection((host, port), timeout=2) as s:
        return str(s.getpeername()[0])


# --------------------------------------------------------------------------- SeaweedFS


def test_seaweedfs_listens_on_loopback_only(seaweedfs: S3Server) -> None:
    assert seaweedfs.endpoint_url.startswith("http://127.0.0.1:")
    assert _listening_address(seaweedfs.endpoint_url) == "127.0.0.1"


def test_seaweedfs_rejects_requests_signed_with_a_wrong_secret(seaweedfs: S3Server) -> None:
    fs = seaweedfs.filesystem(secret="not-the-secret")
    with pytest.raises(PermissionError):
        fs.ls(seaweedfs.make_bucket())


def test_s3fs_uses_path_style_urls(s3_bucket: S3Bucket) -> None:
    client = s3_bucket.server.client()
    url = client.generate_presigned_url("get_object", Params={"Bucket": s3_bucket.name, "Key": "k"})
    client.close()
    assert url.startswith(f"{s3_bucket.server.endpoint_url}/{s3_bucket.name}/k?")


def test_s3fs_round_trip_put_ls_info_cat_rm(s3_bucket: S3Bucket) -> None:
    fs = s3_bucket.server.filesystem()
    fs.pipe(f"{s3_bucket.name}/ckpt/a.txt", b"hello")

    listing = fs.ls(f"{s3_bucket.name}/ckpt", detail=True, refresh=True)
    assert [(e["name"], e["size"]) for e in listing] == [(f"{s3_bucket.name}/ckpt/a.txt", 5)]
    # Single-part ETag is the quoted MD5 of the body.
    assert listing[0]["ETag"] == '"5d41402abc4b2a76b9719d911017c592"'
    assert fs.cat(f"{s3_bucket.name}/ckpt/a.txt") == b"hello"

    fs.rm(f"{s3_bucket.name}/ckpt/a.txt")
    assert not fs.exists(f"{s3_bucket.name}/ckpt/a.txt")
    assert fs.find(s3_bucket.name) == []


def test_s3fs_multipart_upload_yields_multipart_etag(s3_bucket: S3Bucket) -> None:
    fs = s3_bucket.server.filesystem()
    path = f"{s3_bucket.name}/big.bin"
    data = os.urandom(12 * MiB)
    # s3fs only splits into parts of block_size when written in block-sized pieces; one
    # 12 MiB write() becomes a single part ("-1" ETag).
    with fs.open(path, "wb", block_size=5 * MiB) as f:
        for i in range(0, len(data), 5 * MiB):
            f.write(data[i : i + 5 * MiB])

    (entry,) = fs.ls(s3_bucket.name, detail=True, refresh=True)
    assert entry["size"] == len(data)
    assert entry["ETag"].endswith('-3"')  # 5 + 5 + 2 MiB
    assert fs.cat(path) == data


# --------------------------------------------------------------------------- fake-gcs-server


def test_fake_gcs_listens_on_loopback_only(fake_gcs: GcsServer) -> None:
    assert _listening_address(fake_gcs.endpoint_url) == "127.0.0.1"


def test_gcsfs_round_trip_put_ls_info_cat_rm(gcs_bucket: GcsBucket) -> None:
    fs = gcs_bucket.server.filesystem()
    path = f"{gcs_bucket.name}/ckpt/a.txt"
    fs.pipe(path, b"hello")

    info = fs.info(path)
    assert info["size"] == 5
    assert info["md5Hash"] == "XUFAKrxLKna5cZ2REBfFkg=="  # base64 MD5, as real GCS
    assert info["crc32c"] == "mnG7TA=="
    assert fs.ls(f"{gcs_bucket.name}/ckpt", refresh=True) == [path]
    assert fs.cat(path) == b"hello"

    fs.rm(path)
    assert fs.find(gcs_bucket.name, refresh=True) == []


def test_gcsfs_resumable_multi_chunk_upload(gcs_bucket: GcsBucket) -> None:
    fs = gcs_bucket.server.filesystem()
    path = f"{gcs_bucket.name}/big.bin"
    data = os.urandom(20 * MiB + 123)
    with fs.open(path, "wb", block_size=8 * MiB) as f:
        for i in range(0, len(data), MiB):
            f.write(data[i : i + MiB])

    assert fs.info(path)["size"] == len(data)
    assert fs.cat(path) == data


# --------------------------------------------------------------------------- stall proxy


def _get(url: str, timeout: float) -> int:
    with urllib.request.urlopen(url, timeout=timeout) as resp:
        resp.read()
        return int(resp.status)


def test_stall_proxy_blocks_requests_while_stalled_and_forwards_after_resume(
    fake_gcs: GcsServer, stall_proxy_factory: ProxyFactory
) -> None:
    proxy = stall_proxy_factory(*_host_port(fake_gcs.endpoint_url))
    url = f"{proxy.endpoint_url}/storage/v1/b"
    assert _get(url, timeout=5) == 200

    proxy.stall()
    forwarded = proxy.bytes_forwarded
    started = time.monotonic()
    with pytest.raises((TimeoutError, urllib.error.URLError)):
        _get(url, timeout=1)
    assert 0.9 < time.monotonic() - started < 5
    assert proxy.bytes_forwarded == forwarded

    proxy.resume()
    assert _get(url, timeout=5) == 200
    assert proxy.connections_accepted == 3
    assert proxy.bytes_forwarded > forwarded


def _read_response(conn: socket.socket) -> bytes:
    """One whole HTTP/1.1 response (Content-Length or chunked body)."""
    data = b""
    while b"\r\n\r\n" not in data:
        data += conn.recv(65536)
    head, _, body = data.partition(b"\r\n\r\n")
    lowered = head.lower()
    if b"transfer-encoding: chunked" in lowered:
        while not body.endswith(b"0\r\n\r\n"):
            body += conn.recv(65536)
    else:
        length = int(lowered.split(b"content-length:")[1].split(b"\r\n")[0])
        while len(body) < length:
            body += conn.recv(65536)
    return head + b"\r\n\r\n" + body


def test_stall_proxy_stalls_connections_that_are_already_open(
    fake_gcs: GcsServer, stall_proxy_factory: ProxyFactory
) -> None:
    proxy = stall_proxy_factory(*_host_port(fake_gcs.endpoint_url))
    request = b"GET /storage/v1/b HTTP/1.1\r\nHost: x\r\n\r\n"
    with socket.create_connection(("127.0.0.1", proxy.port), timeout=5) as conn:
        conn.sendall(request)
        assert _read_response(conn).startswith(b"HTTP/1.1 200")  # all of it, nothing left

        proxy.stall()
        conn.settimeout(1)
        conn.sendall(request)  # lands in the proxy's socket buffer, goes no further
        with pytest.raises(TimeoutError):
            conn.recv(65536)

        proxy.resume()
        conn.settimeout(5)
        assert _read_response(conn).startswith(b"HTTP/1.1 200")
    assert proxy.connections_accepted == 1


def test_s3fs_read_timeout_fires_through_a_stalled_proxy(
    seaweedfs: S3Server, stall_proxy_factory: ProxyFactory
) -> None:
    proxy = stall_proxy_factory(*_host_port(seaweedfs.endpoint_url))
    fs = seaweedfs.filesystem(
        endpoint_url=proxy.endpoint_url,
        config_kwargs={
            "s3": {"addressing_style": "path"},
            "read_timeout": 1,
            "connect_timeout": 1,
            "retries": {"max_attempts": 1},
        },
    )
    fs.retries = 1  # s3fs's own retry loop on top of botocore's; keep the test short
    bucket = seaweedfs.make_bucket()
    fs.pipe(f"{bucket}/k", b"v")

    proxy.stall()
    started = time.monotonic()
    with pytest.raises(Exception, match=r"(?i)timeout|timed out"):
        fs.cat(f"{bucket}/k")
    assert time.monotonic() - started < 10

    proxy.resume()
    assert fs.cat(f"{bucket}/k") == b"v"


# --------------------------------------------------------------------------- peer CLIs


@pytest.fixture
def upload_tree(tmp_path: Path) -> Path:
    src = tmp_path / "src"
    (src / "sub").mkdir(parents=True)
    (src / "a.txt").write_bytes(b"alpha")
    (src / "sub" / "b.bin").write_bytes(os.urandom(1024))
    return src


def _assert_uploaded(s3_bucket: S3Bucket, prefix: str, dir_markers: bool = False) -> None:
    fs = s3_bucket.server.filesystem()
    found = {k: v["size"] for k, v in fs.find(f"{s3_bucket.name}/{prefix}", detail=True).items()}
    if dir_markers:  # pyarrow makes an empty "dir/" object for each directory it creates
        markers = {k for k in found if k.endswith("/")}
        assert markers == {f"{s3_bucket.name}/{prefix}/", f"{s3_bucket.name}/{prefix}/sub/"}
        found = {k: v for k, v in found.items() if k not in markers}
    assert found == {
        f"{s3_bucket.name}/{prefix}/a.txt": 5,
        f"{s3_bucket.name}/{prefix}/sub/b.bin": 1024,
    }


@pytest.mark.parametrize("tool", ["s5cmd", "rclone", "aws", "pyarrow"])
def test_peer_cli_uploads_a_directory_to_seaweedfs(
    tool: str, s3_bucket: S3Bucket, upload_tree: Path, tmp_path: Path
) -> None:
    dest = f"{s3_bucket.url}/run1"
    if tool == "s5cmd":
        argv, env = peers.s5cmd_cp(s3_bucket.server, upload_tree, dest)
    elif tool == "rclone":
        argv, env = peers.rclone_copy(s3_bucket.server, upload_tree, dest)
    elif tool == "pyarrow":
        argv, env = peers.pyarrow_copy_files(s3_bucket.server, upload_tree, dest)
    else:
        argv, env = peers.aws_s3_cp(s3_bucket.server, upload_tree, dest, config_dir=tmp_path)
    run_peer(argv, env)
    _assert_uploaded(s3_bucket, "run1", dir_markers=tool == "pyarrow")


@pytest.mark.parametrize("tool", ["rclone", "aws"])
def test_peer_cli_downloads_a_prefix_from_seaweedfs(
    tool: str, s3_bucket: S3Bucket, upload_tree: Path, tmp_path: Path
) -> None:
    source = f"{s3_bucket.url}/run1"
    run_peer(*peers.s5cmd_cp(s3_bucket.server, upload_tree, source))
    dest = tmp_path / "down"
    if tool == "rclone":
        argv, env = peers.rclone_download(s3_bucket.server, source, dest)
    else:
        argv, env = peers.aws_s3_download(s3_bucket.server, source, dest, config_dir=tmp_path)
    run_peer(argv, env)
    assert files_of(dest) == files_of(upload_tree)


def run_peer(argv: list[str], env: dict[str, str]) -> None:
    proc = subprocess.run(argv, env=env, capture_output=True, text=True, timeout=60, check=False)
    assert proc.returncode == 0, f"{argv}\nstdout:\n{proc.stdout}\nstderr:\n{proc.stderr}"


def files_of(root: Path) -> dict[str, bytes]:
    return {str(p.relative_to(root)): p.read_bytes() for p in root.rglob("*") if p.is_file()}
