"""HDFS through WebHDFS (fsspec's ``webhdfs``: plain HTTP, no JVM): writes that replace a
file whole, reads of one request, and deletes one path at a time.

fsspec's own writes create an empty file and then append to it block by block, so a reader
sees the file empty, then growing: on HDFS a file is visible as soon as it is created. Here a
file goes up in one ``CREATE`` (its data streamed to the DataNode in one request, exactly
the scanned size) under a temporary name in its directory, which a ``RENAME`` with
``renameoptions=OVERWRITE`` then puts in place in one NameNode operation: a reader sees the
old file or the new, never a part, as on S3 and GCS, and the manifest a checkpoint is
published with appears whole. (fsspec's ``mv`` sends a plain ``RENAME``, which does not
replace an existing file and reports failure only in its JSON, which fsspec ignores.) The
temporary names, and what becomes of those a killed writer left: ``hdfs_temp``.

Blocking (``requests``): the store runs these in worker threads. The ``data_proxy`` option
(how a client reaches DataNodes by other names than those the NameNode redirects to) applies
to every redirect followed here, as it does in fsspec.
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterator
from typing import Any

from trialsync._stores import hdfs_temp
from trialsync._stores.base import RequestCounter, ignore_request
from trialsync._util import local_files

#: The body of an upload is read and sent a chunk at a time.
CHUNK = 2**20
PROTOCOLS = frozenset({"webhdfs"})


class _Body:
    """The first ``size`` bytes of an open file, as ``requests`` streams a body of known
    length (Content-Length, not chunked): read a chunk at a time, each exactly as scanned."""

    def __init__(self, fd: int, size: int, path: str) -> None:
        self._fd, self._size, self._path = fd, size, path

    def __len__(self) -> int:
        return self._size

    def __iter__(self) -> Iterator[bytes]:
        return local_files.chunks(self._fd, self._size, self._path, CHUNK)


def _write(fs: Any, target: str, body: Any, count: RequestCounter) -> None:
    """``CREATE`` ``body`` under a temporary name beside ``target`` (parents are created),
    then rename it over ``target``; on failure the temporary file is deleted. ``count`` is
    told of a ``put`` (the CREATE and the data it redirects to) and an ``other`` (the
    RENAME)."""
    temp = hdfs_temp.temp_beside(target)
    count("put")
    created = fs._call("CREATE", "put", temp, redirect=False, overwrite="false")
    location = fs._apply_proxy(created.headers["Location"])
    try:
        sent = fs.session.put(
            location, data=body, headers={"content-type": "application/octet-stream"}
        )
        sent.raise_for_status()
        count("other")
        fs._call("RENAME", "put", temp, destination=target, renameoptions="OVERWRITE")
    except BaseException:
        with contextlib.suppress(Exception):  # the original error is the one to raise
            fs._call("DELETE", "delete", temp, recursive="false")
        raise


def put_file(
    fs: Any, local_path: str, target: str, size: int, count: RequestCounter = ignore_request
) -> None:
    """Write the first ``size`` bytes of ``local_path`` to ``target``, replacing it whole."""
    with local_files.reading(local_path) as fd:
        _write(fs, target, _Body(fd, size, local_path), count)


def put_bytes(fs: Any, target: str, data: bytes, count: RequestCounter = ignore_request) -> None:
    """Write ``data`` to ``target``, replacing it whole."""
    _write(fs, target, data, count)


def read(fs: Any, path: str, start: int | None = None, end: int | None = None) -> bytes:
    """The bytes of ``path`` (from ``start`` to ``end``, if given): one ``OPEN``, then the
    DataNode it redirects to. FileNotFoundError if there is no such file."""
    params: dict[str, Any] = {}
    if start is not None:
        params["offset"] = start
        if end is not None:
            params["length"] = max(0, end - start)
    opened = fs._call("OPEN", path=path, redirect=False, **params)
    location = opened.headers.get("Location")
    if location is None:  # an HttpFS gateway answers with the data itself
        return bytes(opened.content)
    got = fs.session.get(fs._apply_proxy(location))
    got.raise_for_status()
    return bytes(got.content)


def delete(fs: Any, path: str) -> None:
    """Delete the file ``path``; one already gone is no error (WebHDFS answers false)."""
    fs._call("DELETE", "delete", path, recursive="false")


def find(fs: Any, path: str) -> dict[str, dict[str, Any]]:
    """Every file at or below ``path``, with its details. Unlike fsspec's ``find``, which
    passes over a directory it cannot list, this raises every error but a directory
    removed while it lists: a listing with holes would restore too little, and upload
    again what the store holds."""
    found: dict[str, dict[str, Any]] = {}

    def walk(directory: str, top: bool) -> None:
        try:
            entries = fs.ls(directory, detail=True)
        except FileNotFoundError:
            if top:
                raise
            return
        for entry in entries:
            if entry.get("type") == "directory":
                walk(entry["name"], False)
            else:
                found[entry["name"]] = entry

    walk(path, True)
    return found


def info(fs: Any, path: str) -> dict[str, Any]:
    """The details of ``path`` (fsspec's ``info``); FileNotFoundError if there is none."""
    details: dict[str, Any] = fs.info(path)
    return details
