"""The Syncer base class keeps Ray's contract; custom syncers load from a spec."""

from __future__ import annotations

import re

import pytest

from trialsync import Syncer, SyncError
from trialsync.syncer import load_syncer


class CountingSyncer(Syncer):
    """Succeeds after ``failures`` failed waits (pure logic, no storage)."""

    def __init__(self, sync_period: float = 300, sync_timeout: float = 1800) -> None:
        super().__init__(sync_period, sync_timeout)
        self.ups: list[tuple[str, str]] = []
        self.retries = 0
        self.failures = 0

    def sync_up(self, local_dir: str, remote_dir: str, exclude: list[str] | None = None) -> bool:
        self.ups.append((local_dir, remote_dir))
        return True

    def sync_down(self, remote_dir: str, local_dir: str, exclude: list[str] | None = None) -> bool:
        return True

    def delete(self, remote_dir: str) -> bool:
        return True

    def retry(self) -> None:
        self.retries += 1

    def wait(self) -> None:
        if self.failures:
            self.failures -= 1
            raise OSError("store unavailable")


def test_sync_up_if_needed_honours_the_period(monkeypatch: pytest.MonkeyPatch) -> None:
    clock = [1000.0]
    monkeypatch.setattr("trialsync.syncer.time.monotonic", lambda: clock[0])
    syncer = CountingSyncer(sync_period=300)
    assert syncer.sync_up_if_needed("/l", "s3://b/r") is True
    clock[0] += 299
    assert syncer.sync_up_if_needed("/l", "s3://b/r") is False
    clock[0] += 1
    assert syncer.sync_up_if_needed("/l", "s3://b/r") is True
    assert len(syncer.ups) == 2


def test_wait_or_retry_retries_then_succeeds(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr("trialsync.syncer.time.sleep", lambda _: None)
    syncer = CountingSyncer()
    syncer.failures = 2
    syncer.wait_or_retry(max_retries=2, backoff_s=5)
    assert syncer.retries == 2


def test_wait_or_retry_gives_up_with_the_last_error(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr("trialsync.syncer.time.sleep", lambda _: None)
    syncer = CountingSyncer()
    syncer.failures = 5
    with pytest.raises(SyncError, match="after 3 attempts: store unavailable"):
        syncer.wait_or_retry(max_retries=2, backoff_s=5)


def test_custom_syncer_is_loaded_from_module_and_class() -> None:
    syncer = load_syncer(f"{__name__}:CountingSyncer", sync_period=7, sync_timeout=9)
    assert isinstance(syncer, CountingSyncer)
    assert (syncer.sync_period, syncer.sync_timeout) == (7, 9)


@pytest.mark.parametrize(
    ("spec", "says"),
    [
        ("no_colon", "must be 'auto', 'none' or 'package.module:Class'"),
        ("no.such.module:X", "cannot import 'no.such.module'"),
        (f"{__name__}:pytest", "is not a trialsync.Syncer subclass"),
        (f"{__name__}:Missing", "is not a trialsync.Syncer subclass"),
    ],
)
def test_bad_syncer_specs_are_refused(spec: str, says: str) -> None:
    with pytest.raises(ValueError, match=re.escape(says)):
        load_syncer(spec, 300, 1800)
