"""A Ray ``storage_filesystem`` for pods with the trialsync sidecar: the trial volume, with
the store behind it.

With it, Ray Tune and Train take each pod's trial volume for storage all the cluster
shares, which the sidecars make it:

- writes go to the trial volume, so ``train.report(checkpoint=...)`` waits for a local
  copy only; the sidecar uploads beside the trainer;
- a file this pod does not have is read from the store through the pod's sidecar (the
  upload dir, or the head node): the experiment's ``.validate_storage_marker`` a trial
  checks before each checkpoint, and on ``Tuner.restore`` the experiment state and the
  checkpoints of trials that ran on other pods;
- the marker the driver writes is published at once, before the first trial can ask for
  it: no trial depends on winning a race with a sync;
- directories it makes are open to every user (``0o777``, files ``0o666``): the trainer
  (Ray's images run as uid 1000) and the sidecar (another uid, unless the pod sets one)
  can each write and delete what the other wrote.

Use it in the ``RunConfig``, with the trial volume's path as ``storage_path``::

    from trialsync.ray_storage import storage_filesystem

    RunConfig(
        name="exp",
        storage_path="/home/ray/ray_results",
        storage_filesystem=storage_filesystem("/home/ray/ray_results"),
    )

Standard library and pyarrow only (Ray brings pyarrow). Without a sidecar (outside a pod,
say) it is the local filesystem. docs/architecture.md, "Ray on Kubernetes", says why it
is built so.
"""

from __future__ import annotations

import io
import json
import logging
import os
import posixpath
import urllib.error
import urllib.parse
import urllib.request
from collections.abc import Iterable
from typing import Any

import pyarrow as pa
import pyarrow.fs as pafs

from trialsync import contract

log = logging.getLogger(__name__)

#: What Ray checks before each checkpoint on every pod, and its driver writes once.
MARKER = ".validate_storage_marker"
SIDECAR = f"http://127.0.0.1:{contract.HTTP_PORT}"
#: Seconds a call to the sidecar may take (a publish uploads one small file).
TIMEOUT = 60.0


def storage_filesystem(root: str, sidecar: str = SIDECAR) -> pafs.FileSystem:
    """The filesystem for ``RunConfig(storage_filesystem=...)``: the trial volume at ``root``
    (also the ``storage_path``), backed by the store of the sidecar at ``sidecar``."""
    return pafs.PyFileSystem(TrialVolumeHandler(root, sidecar))


class TrialVolumeHandler(pafs.FileSystemHandler):  # type: ignore[misc]
    """The handler behind ``storage_filesystem``; picklable, as Ray sends it to every trial."""

    def __init__(self, root: str, sidecar: str = SIDECAR) -> None:
        self.root = os.path.abspath(root)
        self.sidecar = sidecar.rstrip("/")
        self._local = pafs.LocalFileSystem()
        #: Paths the store was seen to hold that never go away (the marker).
        self._known: dict[str, pafs.FileInfo] = {}

    def __reduce__(self) -> tuple[Any, ...]:
        return (TrialVolumeHandler, (self.root, self.sidecar))

    def __eq__(self, other: object) -> bool:
        return isinstance(other, TrialVolumeHandler) and (other.root, other.sidecar) == (
            self.root,
            self.sidecar,
        )

    def __ne__(self, other: object) -> bool:
        return not self == other

    def __hash__(self) -> int:
        return hash((self.root, self.sidecar))

    def get_type_name(self) -> str:
        return "trialsync"

    def normalize_path(self, path: str) -> str:
        return path

    # -- reads: the volume, then the store ---------------------------------------------

    def get_file_info(self, paths: Iterable[str]) -> list[pafs.FileInfo]:
        return [self._info(path) for path in paths]

    def _info(self, path: str) -> pafs.FileInfo:
        (local,) = self._local.get_file_info([path])
        rel = self._rel(path)
        if local.type != pafs.FileType.NotFound or rel is None:
            return local
        if path in self._known:
            return self._known[path]
        answer = self._ask("GET", "stat", path=rel)
        if answer is None:
            return pafs.FileInfo(path, pafs.FileType.NotFound)
        info = _file_info(path, json.loads(answer))
        if posixpath.basename(path) == MARKER:
            self._known[path] = info  # the marker stays: ask once per trial
        return info

    def get_file_info_selector(self, selector: pafs.FileSelector) -> list[pafs.FileInfo]:
        base = selector.base_dir.rstrip("/")
        local = self._local.get_file_info(
            pafs.FileSelector(base, allow_not_found=True, recursive=selector.recursive)
        )
        entries = {info.path: info for info in local}
        rel = self._rel(base)
        if rel is not None:
            answer = self._ask("GET", "list", prefix=rel)
            objects = json.loads(answer)["objects"] if answer is not None else {}
            for key, meta in objects.items():
                for info in _entries(base, rel, key, meta, selector.recursive):
                    entries.setdefault(info.path, info)
        if not entries and not selector.allow_not_found:
            (itself,) = self.get_file_info([base])
            if itself.type == pafs.FileType.NotFound:
                raise FileNotFoundError(f"{base}: no such directory, here or in the store")
        return sorted(entries.values(), key=lambda info: str(info.path))

    def open_input_stream(self, path: str) -> pa.NativeFile:
        return self.open_input_file(path)

    def open_input_file(self, path: str) -> pa.NativeFile:
        rel = self._rel(path)
        if os.path.exists(path) or rel is None:
            return self._local.open_input_file(path)
        data = self._ask("GET", "object", path=rel)
        if data is None:
            raise FileNotFoundError(f"{path}: no such file, here or in the store")
        return pa.BufferReader(data)

    # -- writes: the volume, open to the sidecar's user --------------------------------

    def create_dir(self, path: str, recursive: bool) -> None:
        if recursive:
            _makedirs(path)
        else:
            os.mkdir(path, 0o777)
            os.chmod(path, 0o777)

    def open_output_stream(self, path: str, metadata: Any) -> pa.NativeFile:
        return self._open_for_writing(path, os.O_TRUNC)

    def open_append_stream(self, path: str, metadata: Any) -> pa.NativeFile:
        return self._open_for_writing(path, os.O_APPEND)

    def _open_for_writing(self, path: str, mode: int) -> pa.NativeFile:
        _makedirs(os.path.dirname(path))
        fd = os.open(path, os.O_WRONLY | os.O_CREAT | mode, 0o666)
        os.fchmod(fd, 0o666)
        if posixpath.basename(path) != MARKER:
            # A native stream: a checkpoint's bytes do not pass through Python. Only the
            # marker needs to say when it is closed.
            os.close(fd)
            return pa.OSFile(path, mode="a" if mode == os.O_APPEND else "w")
        handle = _Written(os.fdopen(fd, "ab" if mode == os.O_APPEND else "wb"), self, path)
        return pa.PythonFile(handle, mode="w")

    def _written(self, path: str) -> None:
        """A file was closed: the marker is published now, before any trial asks for it."""
        rel = self._rel(path)
        if rel is not None and posixpath.basename(path) == MARKER:
            self._ask("POST", "publish", path=rel)

    def delete_dir(self, path: str) -> None:
        # Tune's driver deletes checkpoints beyond num_to_keep that trials wrote on other
        # pods: this pod has nothing to delete there, and the store keeps its copy unless
        # the SyncConfig mirrors deletions (the pod that wrote it does, when Ray deletes
        # it there).
        if os.path.isdir(path) or self._rel(path) is None:
            self._local.delete_dir(path)

    def delete_dir_contents(self, path: str, missing_dir_ok: bool = False) -> None:
        self._local.delete_dir_contents(path, missing_dir_ok=missing_dir_ok)

    def delete_root_dir_contents(self) -> None:
        raise PermissionError("trialsync: deleting the whole filesystem is not supported")

    def delete_file(self, path: str) -> None:
        if os.path.lexists(path) or self._rel(path) is None:
            self._local.delete_file(path)

    def move(self, src: str, dest: str) -> None:
        _makedirs(os.path.dirname(dest))
        self._local.move(src, dest)

    def copy_file(self, src: str, dest: str) -> None:
        with self.open_input_file(src) as source, self.open_output_stream(dest, None) as out:
            while chunk := source.read(1 << 24):
                out.write(chunk)

    # -- the sidecar -------------------------------------------------------------------

    def _rel(self, path: str) -> str | None:
        """``path`` relative to the root, or None when it is outside the trial volume."""
        rel = os.path.relpath(os.path.abspath(path), self.root)
        if rel == ".":
            return ""
        return None if rel.startswith("..") else rel.replace(os.sep, "/")

    def _ask(self, method: str, what: str, **query: str) -> bytes | None:
        """The sidecar's answer to ``method /v1/storage/<what>?query``; None for a 404 or
        when no sidecar listens (then there is no store behind the volume). A publish the
        sidecar answers 404 to (the file vanished) raises FileNotFoundError."""
        url = f"{self.sidecar}/v1/storage/{what}?{urllib.parse.urlencode(query)}"
        request = urllib.request.Request(url, method=method, data=b"" if method == "POST" else None)
        try:
            with urllib.request.urlopen(request, timeout=TIMEOUT) as answer:
                body: bytes = answer.read()
                return body
        except urllib.error.HTTPError as exc:
            if exc.code == 404 and method == "GET":
                return None
            raise OSError(f"trialsync sidecar: {method} {url}: {exc.code} {exc.reason}") from exc
        except urllib.error.URLError as exc:
            if isinstance(exc.reason, ConnectionRefusedError):
                log.warning("no trialsync sidecar at %s: the trial volume alone", self.sidecar)
                return None
            raise OSError(f"trialsync sidecar: {method} {url}: {exc.reason}") from exc


class _Written(io.RawIOBase):
    """A file being written; tells the handler when it is closed."""

    def __init__(self, file: Any, handler: TrialVolumeHandler, path: str) -> None:
        super().__init__()
        self._file = file
        self._handler = handler
        self._path = path

    def writable(self) -> bool:
        return True

    def write(self, data: Any) -> int:
        written: int = self._file.write(data)
        return written

    def flush(self) -> None:
        self._file.flush()

    def close(self) -> None:
        if self.closed:
            return
        super().close()  # flushes first
        self._file.close()
        self._handler._written(self._path)


def _makedirs(path: str) -> None:
    """``os.makedirs``, each new directory open to every user whatever the umask."""
    missing = []
    while path and not os.path.isdir(path):
        missing.append(path)
        path = os.path.dirname(path)
    for directory in reversed(missing):
        try:
            os.mkdir(directory, 0o777)
        except FileExistsError:
            continue
        os.chmod(directory, 0o777)


def _file_info(path: str, stat: dict[str, Any]) -> pafs.FileInfo:
    if stat["type"] == "dir":
        return pafs.FileInfo(path, pafs.FileType.Directory)
    mtime = stat.get("mtime")
    return pafs.FileInfo(
        path, pafs.FileType.File, size=stat["size"], mtime=mtime if mtime is not None else None
    )


def _entries(
    base: str, rel_base: str, key: str, meta: dict[str, Any], recursive: bool
) -> list[pafs.FileInfo]:
    """The entries a listed object ``key`` gives a selector of ``base``: the file itself,
    and the directories between (recursive); or the first level below ``base`` alone."""
    inner = key[len(rel_base) + 1 :] if rel_base else key
    parts = inner.split("/")
    out = []
    for depth in range(1, len(parts)):
        out.append(pafs.FileInfo(posixpath.join(base, *parts[:depth]), pafs.FileType.Directory))
        if not recursive:
            return out[:1]
    out.append(_file_info(posixpath.join(base, inner), {"type": "file", **meta}))
    return out
