"""HDFS over its own RPC protocol (``hdfs://``) through ``hdfs-native``: a client written in
Rust, in the wheel itself, that speaks to the NameNode and the DataNodes as Hadoop's Java
client does. No JVM, no libhdfs, no Hadoop jars.

A file is written under a temporary name in its directory (``hdfs_temp``) and renamed over
its target with overwrite, one NameNode operation: a reader sees the old file or the new,
never a part, as on S3 and GCS (``hdfs-native``'s fsspec writes in place, visible while
growing). Reads ask for one range; deletes take one path.

The client is configured as Hadoop's is: each storage option is a Hadoop configuration
key (``dfs.client.use.datanode.hostname: "true"``; ``hdfs-native`` also reads the files
of ``HADOOP_CONF_DIR`` if set). Here they start from ``DEFAULT_CONFIG``: with its own
defaults, ``hdfs-native`` was still trying a NameNode that refused connections after
90 s, in a thread no timeout can stop; three tries fail in about 4 s, and the sync's own
retries go on from there.

The user it acts as (simple authentication) is ``HADOOP_USER_NAME``, else the process's
user: ``hdfs-native`` reads the variable whenever it connects. The storage option ``user``,
or a user in the URL (``hdfs://alice@namenode:8020/path``), sets it for the whole process:
a sidecar serves one upload dir.

A Hadoop error's message carries the NameNode's Java stack trace; only its first line is
kept, in an exception of the same type. An error ``hdfs-native`` passes on as it came (a
``RuntimeError`` reading ``RPCError("<Java class>", "<message and stack trace>")``)
becomes an ``OSError`` (``PermissionError`` for a denial) of the Java class's name and
the message's first line (``one_line_errors``). Listings and lookups go through ``find``
and ``info``, for the same.

Blocking: the store runs these in worker threads.
"""

from __future__ import annotations

import contextlib
import functools
import logging
import os
import re
import urllib.parse
from collections.abc import Callable, Iterator, Mapping
from typing import Any, ParamSpec, TypeVar

from trialsync import contract
from trialsync._stores import hdfs_temp
from trialsync._stores.base import RequestCounter, ignore_request
from trialsync._util import local_files

PROTOCOLS = frozenset({"hdfs"})
#: An upload is read from the local file and written a chunk at a time.
CHUNK = 4 * 2**20
#: Hadoop configuration the client starts from; a storage option of the same key wins.
DEFAULT_CONFIG = {
    "dfs.client.failover.max.attempts": "3",
    "dfs.client.failover.sleep.max.millis": "2000",
}
#: ``hdfs-native`` reads the user from the environment whenever it connects.
USER_VARIABLE = "HADOOP_USER_NAME"

log = logging.getLogger(__name__)
_P = ParamSpec("_P")
_T = TypeVar("_T")


#: How ``hdfs-native`` words a NameNode error it does not map: the Java class, then the
#: message with the stack trace (escaped, as Rust's Debug writes a string).
_RPC_ERROR = re.compile(r'RPCError\("(?P<java>[\w.$]+)", "(?P<message>(?:[^"\\]|\\.)*)')
_ESCAPE = re.compile(r"\\(u\{[0-9a-fA-F]+\}|.)")
_ESCAPED = {"n": "\n", "t": "\t", "r": "\r", "0": "\0"}
#: The Java classes of a refusal of who the client is (or of what it may do).
_DENIALS = frozenset({"AccessControlException", "AuthorizationException"})


def _unescaped(text: str) -> str:
    def one(found: re.Match[str]) -> str:
        escape = found[1]
        if escape.startswith("u{"):
            return chr(int(escape[2:-1], 16))
        return _ESCAPED.get(escape, escape)

    return _ESCAPE.sub(one, text)


def rpc_error(exc: RuntimeError) -> OSError | None:
    """The OSError an ``RPCError`` stands for, in one line; None for another error. A
    denial is a PermissionError, but the one Hadoop words as an AccessControlException for
    a path through a file ("... (is not a directory)")."""
    found = _RPC_ERROR.search(str(exc))
    if found is None:
        return None
    java = found["java"].rsplit(".", 1)[-1]
    message = _unescaped(found["message"]).split("\n", 1)[0].rstrip()
    denied = java in _DENIALS and not message.endswith("(is not a directory)")
    return (PermissionError if denied else OSError)(f"{java}: {message}")


def one_line_errors(call: Callable[_P, _T]) -> Callable[_P, _T]:
    """``call``, its Hadoop errors cut to their first line (the Java stack trace dropped)."""

    @functools.wraps(call)
    def calling(*args: _P.args, **kwargs: _P.kwargs) -> _T:
        try:
            return call(*args, **kwargs)
        except RuntimeError as exc:
            translated = rpc_error(exc)
            if translated is None:
                raise
            raise translated from exc
        except OSError as exc:
            message = str(exc)
            if "\n" not in message:
                raise
            try:
                short = type(exc)(message.split("\n", 1)[0].rstrip())
            except TypeError:
                raise exc from None
            raise short from exc

    return calling


def hadoop_config(options: Mapping[str, Any]) -> tuple[dict[str, str], str | None]:
    """The Hadoop configuration of a store's storage options (``DEFAULT_CONFIG`` under them),
    and the user they name (``user``), if any. ValueError (``contract.SettingError``) for
    an option that is no single value."""
    contract.check_hadoop_options(options)
    config = dict(DEFAULT_CONFIG)
    user = None
    for key, value in options.items():
        text = str(value).lower() if isinstance(value, bool) else str(value)
        if key == "user":
            user = text
        else:
            config[key] = text
    return config, user


def filesystem(url: str, options: Mapping[str, Any]) -> tuple[Any, str]:
    """A new ``hdfs-native`` filesystem for the upload dir ``url``, and the upload dir's
    path in it."""
    from hdfs_native.fsspec import HdfsFileSystem

    parts = urllib.parse.urlsplit(url)
    config, user = hadoop_config(options)
    user = user or (urllib.parse.unquote(parts.username) if parts.username else None)
    if user is not None and os.environ.get(USER_VARIABLE) != user:
        log.info("acting on HDFS as %s (%s)", user, USER_VARIABLE)
        os.environ[USER_VARIABLE] = user
    fs = HdfsFileSystem(parts.hostname, parts.port, skip_instance_cache=True, **config)
    return fs, parts.path


def _write(fs: Any, target: str, chunks: Iterator[bytes], count: RequestCounter) -> None:
    """Write ``chunks`` to a temporary file beside ``target`` (parents are created), then
    rename it over ``target``; on failure the temporary file is deleted. ``count`` is told
    of a ``put`` (the file) and an ``other`` (the rename)."""
    from hdfs_native import WriteOptions

    temp = hdfs_temp.temp_beside(target)
    count("put")
    try:
        with fs.client.create(temp, WriteOptions(overwrite=False, create_parent=True)) as out:
            for chunk in chunks:
                out.write(chunk)
        count("other")
        fs.client.rename(temp, target, True)
    except BaseException:
        with contextlib.suppress(Exception):  # the original error is the one to raise
            fs.client.delete(temp, False)
        raise


@one_line_errors
def put_file(
    fs: Any, local_path: str, target: str, size: int, count: RequestCounter = ignore_request
) -> None:
    """Write the first ``size`` bytes of ``local_path`` to ``target``, replacing it whole."""
    with local_files.reading(local_path) as fd:
        _write(fs, target, local_files.chunks(fd, size, local_path, CHUNK), count)


@one_line_errors
def put_bytes(fs: Any, target: str, data: bytes, count: RequestCounter = ignore_request) -> None:
    """Write ``data`` to ``target``, replacing it whole."""
    _write(fs, target, iter((data,)), count)


@one_line_errors
def read(fs: Any, path: str, start: int | None = None, end: int | None = None) -> bytes:
    """The bytes of ``path`` (from ``start`` to ``end``, if given). FileNotFoundError if
    there is no such file."""
    with fs.client.read(path) as reader:
        first = start or 0
        last = reader.size if end is None else min(end, reader.size)
        return bytes(reader.read_range(first, max(0, last - first)))


@one_line_errors
def delete(fs: Any, path: str) -> None:
    """Delete the file ``path``; one already gone is no error."""
    fs.client.delete(path, False)


@one_line_errors
def find(fs: Any, path: str) -> dict[str, dict[str, Any]]:
    """Every file at or below ``path`` (by path: its size and mtime), from one recursive
    listing. Unlike fsspec's ``find``, which passes over a directory it cannot list, this
    raises every error: a listing with holes would restore too little, and upload again
    what the store holds."""
    return {
        status.path: {
            "name": status.path,
            "type": "file",
            "size": status.length,
            "modification_time": status.modification_time,
        }
        for status in fs.client.list_status(fs._strip_protocol(path), True)
        if not status.isdir
    }


@one_line_errors
def info(fs: Any, path: str) -> dict[str, Any]:
    """The details of ``path`` (fsspec's ``info``); FileNotFoundError if there is none."""
    details: dict[str, Any] = fs.info(path)
    return details
