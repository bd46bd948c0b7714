"""Where files belong, and when the ledger trusts a remote copy."""

from __future__ import annotations

import pytest

from trialsync._engine import layout as layout_module
from trialsync._engine.engine import listing_scopes
from trialsync._engine.layout import MANIFEST_NAME, Kind, Layout, Placement
from trialsync._engine.ledger import Ledger
from trialsync._stores.base import RemoteObject


def test_files_are_placed_as_the_seed_scenarios_need() -> None:
    layout = Layout()
    assert layout.place("exp/experiment_state-2024.json") == Placement(Kind.EXPERIMENT)
    assert layout.place("exp/trial_1/result.json") == Placement(Kind.ARTIFACT)
    assert layout.place("exp/trial_1/media/plot.png") == Placement(Kind.ARTIFACT)
    assert layout.place("exp/trial_1/checkpoint_000003/model.pt") == Placement(
        Kind.CHECKPOINT, "exp/trial_1/checkpoint_000003"
    )
    assert layout.place("exp/trial_1/checkpoint_000003/sub/dir/w.bin") == Placement(
        Kind.CHECKPOINT, "exp/trial_1/checkpoint_000003"
    )


def test_train_v2s_checkpoints_have_no_trial_level_and_keep_their_depth() -> None:
    layout = Layout()
    run = "my_run/checkpoint_2026-12-06_05-30-00.123456"
    assert layout.place(f"{run}/model.pt") == Placement(Kind.CHECKPOINT, run)
    assert layout.place(f"{run}/shard/0.bin") == Placement(Kind.CHECKPOINT, run)
    assert layout.checkpoint_dir(run) == run
    assert layout.place("my_run/.validate_storage_marker") == Placement(Kind.EXPERIMENT)
    assert layout.place("my_run/checkpoint_manager_snapshot.json") == Placement(Kind.EXPERIMENT)
    # A Tune trial dir is never taken for a checkpoint, nor its checkpoints lose a level.
    assert layout.checkpoint_dir("exp/train_fn_00000_0_lr=0.1") is None
    tune = "exp/train_fn_00000_0_lr=0.1/checkpoint_000002"
    assert layout.place(f"{tune}/model.pt") == Placement(Kind.CHECKPOINT, tune)


def test_temp_checkpoint_dirs_and_manifests_are_not_checkpoint_files() -> None:
    layout = Layout()
    assert layout.place("exp/t/checkpoint_tmp123/model.pt") == Placement(Kind.ARTIFACT)
    assert layout.place(f"exp/t/checkpoint_000001/{MANIFEST_NAME}") is None


def test_excludes_and_custom_checkpoint_pattern_apply() -> None:
    layout = Layout(checkpoint_pattern="ckpt-*", excludes=("*.tmp", "exp/t/scratch/*"))
    assert layout.place("exp/t/ckpt-7/w.bin") == Placement(Kind.CHECKPOINT, "exp/t/ckpt-7")
    assert layout.place("exp/t/checkpoint_000001/w.bin") == Placement(Kind.ARTIFACT)
    assert layout.place("exp/t/result.json.tmp") is None
    assert layout.place("exp/t/scratch/big.bin") is None
    assert layout.checkpoint_dir("exp/t/ckpt-7") == "exp/t/ckpt-7"
    assert layout.checkpoint_dir("exp/t") is None


def test_rebuild_trusts_an_artifact_of_same_size_not_older_than_local_to_the_second() -> None:
    mtime = 1_700_000_000
    local = {
        "same": (10, mtime * 10**9),
        "resized": (10, mtime * 10**9),
        "newer_locally": (10, (mtime + 60) * 10**9),
        # S3 keeps whole seconds: an upload 0.3 s after a change at .7 shows .0.
        "same_second": (10, mtime * 10**9 + 700_000_000),
        "second_before": (10, mtime * 10**9 + 700_000_000),
        "missing": (10, mtime * 10**9),
        "no_mtime": (10, mtime * 10**9),
    }
    remote = {
        "same": RemoteObject(10, mtime + 5.0),
        "resized": RemoteObject(11, mtime + 5.0),
        "newer_locally": RemoteObject(10, mtime + 5.0),
        "same_second": RemoteObject(10, float(mtime)),
        "second_before": RemoteObject(10, float(mtime - 1)),
        "no_mtime": RemoteObject(10, None),
    }
    ledger = Ledger.rebuild(local, remote, {"exp/t/checkpoint_000001"}, {}, lambda rel: False)
    trusted = {rel for rel in local if ledger.is_current(rel, local[rel])}
    assert trusted == {"same", "same_second", "no_mtime"}
    assert ledger.published == {"exp/t/checkpoint_000001"}


def test_rebuild_trusts_a_checkpoint_file_only_as_its_manifest_lists_it() -> None:
    ckpt = "exp/t/checkpoint_000001"
    mtime_ns = 1_700_000_000 * 10**9
    local = {
        f"{ckpt}/listed": (10, mtime_ns),
        f"{ckpt}/rewritten": (10, mtime_ns + 1),  # same size, one nanosecond later
        f"{ckpt}/unlisted": (10, mtime_ns),  # no manifest entry: a crash before it
        f"{ckpt}/gone_remotely": (10, mtime_ns),
    }
    # Every remote copy is newer than the local file: the artifact rule would trust all.
    remote = {rel: RemoteObject(10, mtime_ns / 1e9 + 5) for rel in local}
    del remote[f"{ckpt}/gone_remotely"]
    manifests = {
        f"{ckpt}/listed": (10, mtime_ns),
        f"{ckpt}/rewritten": (10, mtime_ns),
        f"{ckpt}/gone_remotely": (10, mtime_ns),
    }
    ledger = Ledger.rebuild(local, remote, {ckpt}, manifests, lambda rel: rel.startswith(ckpt))
    trusted = {rel for rel in local if ledger.is_current(rel, local[rel])}
    assert trusted == {f"{ckpt}/listed"}


def test_forgetting_a_checkpoint_drops_its_files_and_its_publication() -> None:
    ledger = Ledger()
    ledger.record("e/t/checkpoint_1/a", (1, 1))
    ledger.record("e/t/checkpoint_10/a", (1, 1))
    ledger.published.add("e/t/checkpoint_1")
    ledger.forget_under("e/t/checkpoint_1")
    assert not ledger.is_current("e/t/checkpoint_1/a", (1, 1))
    assert ledger.is_current("e/t/checkpoint_10/a", (1, 1))
    assert ledger.published == set()


@pytest.mark.parametrize(
    ("local", "scopes"),
    [
        ([], []),
        (["exp/t1/params.json", "exp/t1/checkpoint_000001/model.pt"], ["exp/t1"]),
        (["exp/t1/a", "exp/t2/b", "other/t9/c"], ["exp/t1", "exp/t2", "other/t9"]),
        (["exp/state.json", "exp/t1/a", "other/t9/c"], ["exp", "other/t9"]),
        (["loose-file", "exp/t1/a"], [""]),
        ([f"exp/t{i}/a" for i in range(5)], [""]),  # more than the limit: list everything
    ],
)
def test_listing_scopes_cover_every_local_file(local: list[str], scopes: list[str]) -> None:
    assert listing_scopes(local, limit=4) == scopes


def test_placements_are_remembered_up_to_a_bound(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(layout_module, "PLACE_CACHE", 3)
    made = Layout(excludes=("*.tmp",))
    paths = [
        "exp/trial_1/checkpoint_000001/model.pt",
        "exp/trial_1/result.json",
        "exp/state.json",
        "exp/trial_1/x.tmp",
        "exp/trial_1/checkpoint_000001/model.pt",
    ]
    answers = [made.place(path) for path in paths]
    assert answers == [made._place(path) for path in paths]
    assert answers[0] == Placement(Kind.CHECKPOINT, "exp/trial_1/checkpoint_000001")
    assert answers[3] is None
    # The fourth path found the memory full: it started over with that one alone.
    assert set(made._placed) == {paths[3], paths[4]}
