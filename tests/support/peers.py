"""Command lines for the peer uploaders the benchmarks compare against (s5cmd, rclone, aws,
and pyarrow as Ray uploads a checkpoint).

Each builder returns ``(argv, env)`` for ``subprocess.run(argv, env=env)``: a recursive
upload of ``src_dir``'s contents to ``dest_url`` (``s3://bucket/prefix``), so that
``src_dir/a/b`` lands at ``prefix/a/b`` for every tool, tuned for throughput; the
``*_download`` ones the other way. ``env`` is the
full environment (``os.environ`` plus the server's settings), so credentials and endpoint
never come from a developer's ~/.aws or ~/.config/rclone.
"""

from __future__ import annotations

import os
import shutil
import sys
from pathlib import Path

from localcluster.object_stores import S3Server

_VENV_BIN = Path(__file__).resolve().parents[2] / ".venv" / "bin"
#: rclone remote name defined purely through RCLONE_CONFIG_<NAME>_* env vars.
RCLONE_REMOTE = "trialsync"

Command = tuple[list[str], dict[str, str]]


def tool(name: str) -> str:
    """Absolute path of ``name``: the venv's copy (pinned by pyproject) first, then PATH."""
    candidate = _VENV_BIN / name
    if candidate.is_file():
        return str(candidate)
    found = shutil.which(name)
    if found is None:
        raise FileNotFoundError(f"{name} not found in {_VENV_BIN} or on PATH")
    return found


def _split(dest_url: str) -> tuple[str, str]:
    if not dest_url.startswith("s3://"):
        raise ValueError(f"expected s3://bucket[/prefix], got {dest_url!r}")
    bucket, _, prefix = dest_url[len("s3://") :].partition("/")
    return bucket, prefix.strip("/")


def _env(server: S3Server) -> dict[str, str]:
    return {**os.environ, **server.env()}


def s5cmd_cp(server: S3Server, src_dir: Path, dest_url: str) -> Command:
    """``s5cmd cp 'src_dir/*' dest_url/`` with s5cmd's default worker pool (256)."""
    bucket, prefix = _split(dest_url)
    dest = f"s3://{bucket}/{prefix}/" if prefix else f"s3://{bucket}/"
    argv = [
        tool("s5cmd"),
        "--endpoint-url",
        server.endpoint_url,
        "--log",
        "error",
        "cp",
        # The wildcard (expanded by s5cmd, not a shell) keeps keys relative to src_dir.
        f"{Path(src_dir)}/*",
        dest,
    ]
    return argv, _env(server)


def rclone_copy(server: S3Server, src_dir: Path, dest_url: str) -> Command:
    """``rclone copy src_dir remote:bucket/prefix`` with 32 transfers and checkers."""
    upload = ["--s3-upload-concurrency", "8", "--s3-chunk-size", "8M"]
    return _rclone(server, str(src_dir), _rclone_path(dest_url), upload)


def rclone_download(server: S3Server, src_url: str, dest_dir: Path) -> Command:
    """``rclone copy remote:bucket/prefix dest_dir`` with 32 transfers and checkers (and
    its default multi-thread downloads of large files)."""
    return _rclone(server, _rclone_path(src_url), str(dest_dir), [])


def _rclone_path(url: str) -> str:
    bucket, prefix = _split(url)
    return f"{RCLONE_REMOTE}:{bucket}/{prefix}" if prefix else f"{RCLONE_REMOTE}:{bucket}"


def _rclone(server: S3Server, source: str, dest: str, tuning: list[str]) -> Command:
    name = RCLONE_REMOTE.upper()
    env = _env(server)
    env.update(
        {
            f"RCLONE_CONFIG_{name}_TYPE": "s3",
            f"RCLONE_CONFIG_{name}_PROVIDER": "SeaweedFS",
            f"RCLONE_CONFIG_{name}_ENDPOINT": server.endpoint_url,
            f"RCLONE_CONFIG_{name}_ACCESS_KEY_ID": server.access_key,
            f"RCLONE_CONFIG_{name}_SECRET_ACCESS_KEY": server.secret_key,
            f"RCLONE_CONFIG_{name}_REGION": server.region,
            f"RCLONE_CONFIG_{name}_FORCE_PATH_STYLE": "true",
            # No config file: an rclone.conf on the host must not add or override remotes.
            "RCLONE_CONFIG": "/dev/null",
        }
    )
    argv = [
        tool("rclone"),
        "copy",
        source,
        dest,
        "--transfers",
        "32",
        "--checkers",
        "32",
        *tuning,
        # A fresh destination: skip the per-object check that only helps incremental syncs.
        "--no-check-dest",
        "--no-update-modtime",
        "--retries",
        "1",
        "--stats",
        "0",
        "--log-level",
        "ERROR",
    ]
    return argv, env


def aws_s3_cp(server: S3Server, src_dir: Path, dest_url: str, *, config_dir: Path) -> Command:
    """``aws s3 cp --recursive``, with concurrency set in ``config_dir/aws-config``.

    The aws CLI takes transfer concurrency only from its config file, so one is written.
    """
    return _aws_cp(server, str(src_dir), dest_url, config_dir)


def aws_s3_download(server: S3Server, src_url: str, dest_dir: Path, *, config_dir: Path) -> Command:
    """``aws s3 cp --recursive`` from ``src_url`` into ``dest_dir``, tuned as ``aws_s3_cp``."""
    return _aws_cp(server, src_url, str(dest_dir), config_dir)


def _aws_cp(server: S3Server, source: str, dest: str, config_dir: Path) -> Command:
    config = Path(config_dir) / "aws-config"
    config.write_text(
        "[default]\n"
        f"region = {server.region}\n"
        "s3 =\n"
        "  max_concurrent_requests = 64\n"
        "  max_queue_size = 10000\n"
        "  multipart_threshold = 8MB\n"
        "  multipart_chunksize = 8MB\n"
        "  addressing_style = path\n"
    )
    env = _env(server)
    env["AWS_CONFIG_FILE"] = str(config)
    argv = [
        tool("aws"),
        "s3",
        "cp",
        "--recursive",
        "--only-show-errors",
        "--no-progress",
        "--endpoint-url",
        server.endpoint_url,
        source,
        dest,
    ]
    return argv, env


# Ray 2.60's upload of a checkpoint (ray.train._internal.storage._pyarrow_fs_copy_files):
# pyarrow.fs.copy_files to an S3FileSystem, in 64 MiB chunks, one thread (Ray turns
# threads off for uploads to S3, apache/arrow#32372).
_PYARROW_UPLOAD = """
import sys
from pyarrow import fs
endpoint, region, source, dest = sys.argv[1:]
scheme, _, host = endpoint.partition("://")
s3 = fs.S3FileSystem(endpoint_override=host, region=region, scheme=scheme)
fs.copy_files(source, dest, destination_filesystem=s3, use_threads=False, chunk_size=64 << 20)
"""


def pyarrow_copy_files(server: S3Server, src_dir: Path, dest_url: str) -> Command:
    """``pyarrow.fs.copy_files(src_dir, bucket/prefix)`` with Ray 2.60's settings."""
    bucket, prefix = _split(dest_url)
    dest = f"{bucket}/{prefix}" if prefix else bucket
    argv = [sys.executable, "-c", _PYARROW_UPLOAD, server.endpoint_url, server.region]
    return [*argv, str(src_dir), dest], _env(server)
