"""How a file goes up, on every backend: exactly as scanned, and off the event loop."""

from __future__ import annotations

import asyncio
import os
import pathlib

from tests.servers.conftest import Backend
from tests.support import trials
from tests.support.loop_io import io_on_this_thread
from trialsync._engine import watcher
from trialsync._stores.fsspec_store import RemoteStore
from trialsync._util import local_files, small_reads

MiB = 2**20
# One PutObject / simple upload; the same in one request still; parts / resumable chunks.
SIZES = {"small.bin": 10_000, "medium.bin": 3 * MiB, "large.bin": 11 * MiB}


def store_for(backend: Backend) -> RemoteStore:
    return RemoteStore(
        backend.url, backend.storage_options, part_size=5 * MiB, **backend.store_options
    )


async def test_a_file_that_grew_since_its_scan_is_sent_as_scanned(
    backend: Backend, tmp_path: pathlib.Path
) -> None:
    # The upload reserved memory for the scanned size: it must read no more than that.
    store = store_for(backend)
    try:
        for name, scanned in SIZES.items():
            path = tmp_path / name
            path.write_bytes(os.urandom(scanned + 3 * MiB))  # it grew after the scan
            await store.put_file(str(path), name, scanned)
    finally:
        await store.close()
    listing = backend.listing()
    for name, scanned in SIZES.items():
        assert listing[name] == scanned
        assert backend.read(name) == (tmp_path / name).read_bytes()[:scanned]


async def test_uploads_read_local_files_off_the_event_loop(
    backend: Backend, tmp_path: pathlib.Path
) -> None:
    store = store_for(backend)
    files = {}
    for name, size in SIZES.items():
        files[name] = tmp_path / name
        files[name].write_bytes(os.urandom(size))
    await store.connect()
    try:
        with io_on_this_thread(str(tmp_path)) as on_loop:
            for name, path in files.items():
                await store.put_file(str(path), name, path.stat().st_size)
    finally:
        await store.close()
    assert on_loop == []  # every open and read ran in a worker thread
    for name, path in files.items():
        assert backend.read(name) == path.read_bytes()


async def test_watching_a_tree_runs_off_the_event_loop(root: pathlib.Path) -> None:
    for t in range(20):
        trials.checkpoint(trials.trial(root / "exp", f"trial_{t:05d}"), 1, {"model.pt": 10})
    seen: list[str] = []
    journal = watcher.InotifyJournal(str(root))
    with io_on_this_thread(str(root)) as on_start:
        await journal.start(lambda rel, d, r: seen.append(rel), lambda: None)
    trials.checkpoint(trials.trial(root / "exp2"), 1, {"model.pt": 10})
    with io_on_this_thread(str(root)) as on_new_subtree:  # watched, and what it holds told
        await journal.catch_up()
    journal.close()
    assert on_start == []
    assert on_new_subtree == []
    # The root, exp, 20 trials with a checkpoint each, then exp2, its trial and checkpoint.
    assert journal.watched_dirs == 2 + 20 * 2 + 3
    assert "exp2/trial_00000/checkpoint_000001/model.pt" in seen


async def test_small_reads_asked_together_each_get_their_own_bytes_or_error(
    tmp_path: pathlib.Path,
) -> None:
    paths = []
    for i in range(150):  # more than one batch
        paths.append(tmp_path / f"f{i}")
        paths[-1].write_bytes(os.urandom(i * 10))
    paths[7].unlink()  # one is gone by the time it is read
    (tmp_path / "f9").write_bytes(b"short")  # one shrank below its scanned size
    sizes = [i * 10 for i in range(150)]
    reads = [
        asyncio.ensure_future(small_reads.read_exact(str(p), n))
        for p, n in zip(paths, sizes, strict=True)
    ]
    reads[3].cancel()  # its reader gave up: the others are not disturbed
    results = await asyncio.gather(*reads, return_exceptions=True)
    for i, result in enumerate(results):
        if i == 3:
            assert isinstance(result, asyncio.CancelledError)
        elif i == 7:
            assert isinstance(result, local_files.LocalReadError)
        elif i == 9:
            assert isinstance(result, local_files.ShortRead)
        else:
            assert result == paths[i].read_bytes()
