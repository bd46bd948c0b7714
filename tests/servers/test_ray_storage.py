"""Ray's storage filesystem for pods with a sidecar (``trialsync.ray_storage``), with real
sidecars and a real store: two pods' trial volumes become one storage, as Ray needs."""

from __future__ import annotations

import os
import pathlib
import pickle
import stat

import pyarrow.fs as pafs
import pytest

from localcluster.processes import free_port
from tests.servers.conftest import Backend
from tests.servers.test_head_sync import head_sidecar, worker
from tests.support.sidecar_process import Sidecar, wait_for
from trialsync.ray_storage import MARKER, storage_filesystem

__all__ = ["head_sidecar"]  # a fixture, used by name

EXP = "exp"
TRIAL = f"{EXP}/trial_00000"


def pod(tmp_path: pathlib.Path, sidecars: list[Sidecar], s3: Backend, name: str) -> pafs.FileSystem:
    """A pod: its trial volume ``tmp_path/name`` and its sidecar syncing it to ``s3``; the
    filesystem its trainer would use."""
    root = tmp_path / name
    root.mkdir()
    sidecar = Sidecar.start(
        ["--root", str(root), "--upload-dir", s3.url, "--checkpoint-settle", "1"],
        s3.env,
        str(tmp_path / f"{name}.log"),
    )
    sidecars.append(sidecar)
    wait_for(lambda: sidecar.get("/readyz")[0] == 200, 30, what=f"{name}'s sidecar ready")
    return storage_filesystem(str(root), f"http://127.0.0.1:{sidecar.port}")


def write(fs: pafs.FileSystem, path: str, data: bytes) -> None:
    fs.create_dir(os.path.dirname(path), recursive=True)
    with fs.open_output_stream(path) as out:
        out.write(data)


def test_the_drivers_marker_is_in_the_store_when_its_write_returns_and_every_pod_finds_it(
    s3: Backend, tmp_path: pathlib.Path, sidecars: list[Sidecar]
) -> None:
    driver = pod(tmp_path, sidecars, s3, "head")
    trial = pod(tmp_path, sidecars, s3, "worker")
    # What Ray's StorageContext does on the driver, then before each checkpoint elsewhere.
    marker = f"{tmp_path}/head/{EXP}/{MARKER}"
    write(driver, marker, b"")
    assert f"{EXP}/{MARKER}" in s3.listing()  # published on close, no settle window
    (info,) = trial.get_file_info([f"{tmp_path}/worker/{EXP}/{MARKER}"])
    assert info.type == pafs.FileType.File
    assert not (tmp_path / "worker" / EXP / MARKER).exists()  # found in the store, not here
    (missing,) = trial.get_file_info([f"{tmp_path}/worker/other/{MARKER}"])
    assert missing.type == pafs.FileType.NotFound


def test_a_checkpoint_written_on_one_pod_is_listed_and_read_on_another(
    s3: Backend, tmp_path: pathlib.Path, sidecars: list[Sidecar]
) -> None:
    worker_fs = pod(tmp_path, sidecars, s3, "worker")
    head_fs = pod(tmp_path, sidecars, s3, "head")
    files = {"model.pt": os.urandom(300_000), "meta/state.json": b'{"step": 3}'}
    for name, data in files.items():
        write(worker_fs, f"{tmp_path}/worker/{TRIAL}/checkpoint_000001/{name}", data)
    wait_for(
        lambda: f"{TRIAL}/checkpoint_000001/.trialsync-manifest.json" in s3.listing(),
        60,
        what="the checkpoint published",
    )
    # Tune's restore on the new head: a listing of the trial dir, then each file.
    base = f"{tmp_path}/head/{TRIAL}"
    listed = head_fs.get_file_info(pafs.FileSelector(base, recursive=True))
    kinds = {info.path[len(base) + 1 :]: info.type for info in listed}
    assert kinds["checkpoint_000001"] == pafs.FileType.Directory
    assert kinds["checkpoint_000001/meta"] == pafs.FileType.Directory
    assert kinds["checkpoint_000001/model.pt"] == pafs.FileType.File
    top = head_fs.get_file_info(pafs.FileSelector(base))
    assert [info.path for info in top] == [f"{base}/checkpoint_000001"]
    local = tmp_path / "restored"
    pafs.copy_files(f"{base}/checkpoint_000001", str(local), source_filesystem=head_fs)
    for name, data in files.items():
        assert (local / name).read_bytes() == data
    with head_fs.open_input_file(f"{base}/checkpoint_000001/model.pt") as handle:
        assert handle.read() == files["model.pt"]
    assert not (tmp_path / "head" / TRIAL).exists()  # read through, nothing written here


def test_a_checkpoint_without_its_manifest_is_not_there_for_a_reader(
    s3: Backend, tmp_path: pathlib.Path, sidecars: list[Sidecar]
) -> None:
    """A checkpoint whose upload was cut short (its files, no manifest) is invisible to a
    restore; once its manifest is there, it is whole, and the manifest stays hidden."""
    fs = pod(tmp_path, sidecars, s3, "head")
    checkpoint = f"{TRIAL}/checkpoint_000007"
    store = s3.reader()
    store.pipe_file(f"{s3._root()}/{checkpoint}/model.pt", b"half")
    store.pipe_file(f"{s3._root()}/{TRIAL}/result.json", b"{}\n")
    base = f"{tmp_path}/head/{TRIAL}"

    def listed() -> set[str]:
        infos = fs.get_file_info(pafs.FileSelector(base, recursive=True))
        return {info.path[len(base) + 1 :] for info in infos}

    assert listed() == {"result.json"}
    (info,) = fs.get_file_info([f"{base}/checkpoint_000007/model.pt"])
    assert info.type == pafs.FileType.NotFound
    with pytest.raises(FileNotFoundError):
        fs.open_input_file(f"{base}/checkpoint_000007/model.pt")
    with pytest.raises(FileNotFoundError):
        pafs.copy_files(f"{base}/checkpoint_000007", str(tmp_path / "r"), source_filesystem=fs)
    store.pipe_file(f"{s3._root()}/{checkpoint}/.trialsync-manifest.json", b"{}")
    assert listed() == {"result.json", "checkpoint_000007", "checkpoint_000007/model.pt"}
    inside = fs.get_file_info(pafs.FileSelector(f"{base}/checkpoint_000007"))
    assert [i.path for i in inside] == [f"{base}/checkpoint_000007/model.pt"]
    with fs.open_input_file(f"{base}/checkpoint_000007/model.pt") as handle:
        assert handle.read() == b"half"


def test_what_it_writes_the_sidecar_and_the_trainer_can_both_write_and_delete(
    s3: Backend, tmp_path: pathlib.Path, sidecars: list[Sidecar]
) -> None:
    fs = pod(tmp_path, sidecars, s3, "p")
    path = f"{tmp_path}/p/{TRIAL}/checkpoint_000001/model.pt"
    os.umask(0o022)
    write(fs, path, b"x")
    for directory in (f"{tmp_path}/p/{EXP}", f"{tmp_path}/p/{TRIAL}", os.path.dirname(path)):
        assert stat.S_IMODE(os.stat(directory).st_mode) == 0o777, directory
    assert stat.S_IMODE(os.stat(path).st_mode) == 0o666


def test_it_travels_as_ray_sends_it_and_without_a_sidecar_is_the_volume_alone(
    tmp_path: pathlib.Path,
) -> None:
    closed = f"http://127.0.0.1:{free_port()}"
    fs = storage_filesystem(str(tmp_path), closed)
    again = pickle.loads(pickle.dumps(fs))
    assert again == fs
    write(again, f"{tmp_path}/{EXP}/{MARKER}", b"")  # no sidecar to publish through: local
    (info,) = again.get_file_info([f"{tmp_path}/{EXP}/{MARKER}"])
    assert info.type == pafs.FileType.File
    (missing,) = again.get_file_info([f"{tmp_path}/{EXP}/nothing"])
    assert missing.type == pafs.FileType.NotFound


def test_without_an_upload_dir_a_worker_finds_the_marker_on_the_head(
    tmp_path: pathlib.Path,
    sidecars: list[Sidecar],
    head_sidecar: tuple[str, pathlib.Path],
) -> None:
    head_url, head_root = head_sidecar
    head_port = next(s.port for s in sidecars if "--role" in s.args)
    driver = storage_filesystem(str(head_root), f"http://127.0.0.1:{head_port}")
    write(driver, f"{head_root}/{EXP}/{MARKER}", b"")  # on the head's volume: published
    sidecar, root = worker(tmp_path, sidecars, head_url, "--sync-period", "1")
    trial = storage_filesystem(str(root), f"http://127.0.0.1:{sidecar.port}")
    (info,) = trial.get_file_info([f"{root}/{EXP}/{MARKER}"])
    assert info.type == pafs.FileType.File
    # A trial dir the worker wrote reaches the head, where the driver reads it.
    write(trial, f"{root}/{TRIAL}/result.json", b'{"loss": 1}\n')
    wait_for(lambda: (head_root / TRIAL / "result.json").exists(), 30, what="the trial dir")
    with driver.open_input_stream(f"{head_root}/{TRIAL}/result.json") as handle:
        assert handle.read() == b'{"loss": 1}\n'


@pytest.mark.parametrize("path", ["/etc/passwd", "../x", "a/../../x"])
def test_the_storage_api_takes_no_path_outside_the_volume(
    s3: Backend, tmp_path: pathlib.Path, sidecars: list[Sidecar], path: str
) -> None:
    pod(tmp_path, sidecars, s3, "p")
    status, _ = sidecars[0].get(f"/v1/storage/stat?path={path}")
    assert status == 400
