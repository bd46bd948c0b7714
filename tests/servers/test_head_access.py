"""Who may write where on the head node: registration, identities, claims, leases."""

from __future__ import annotations

import asyncio
import json
import pathlib
import stat
from collections.abc import AsyncIterator

import aiohttp
import pytest

from tests.support.head_service import SHARED, TOKEN, Receiver, open_put, read_answer, tree
from trialsync._head.store import HeadStore
from trialsync._stores.base import ObjectRefused
from trialsync.metrics import Metrics

pytestmark = pytest.mark.timeout(60)


async def request(
    session: aiohttp.ClientSession, method: str, url: str, auth: dict[str, str], data: bytes = b""
) -> tuple[int, dict[str, str]]:
    async with session.request(method, url, headers=auth, data=data or None) as response:
        answer = await response.json() if response.content_type == "application/json" else {}
        return response.status, answer


def holder_of(auth: dict[str, str]) -> str:
    """The id inside an identity."""
    return auth["Authorization"].removeprefix("Bearer ").rpartition(".")[0]


async def test_the_shared_token_only_registers_a_worker(
    root: pathlib.Path, head: Receiver, session: aiohttp.ClientSession
) -> None:
    calls = [
        ("PUT", head.objects("exp/t/x"), b"x"),
        ("GET", head.objects("exp/t/x"), b""),
        ("GET", f"{head.objects()}?prefix=", b""),
        ("DELETE", head.objects("exp/t/x"), b""),
        ("DELETE", f"{head.url}/v1/claims", b""),
    ]
    for method, url, data in calls:
        status, answer = await request(session, method, url, SHARED, data)
        assert status == 403, (method, url)
        assert answer["reason"] == "shared_token"
        assert "POST /v1/register" in answer["error"]
    status, answer = await request(
        session, "POST", f"{head.url}/v1/register", SHARED, b'{"name": "train-worker-0"}'
    )
    assert status == 201
    assert answer["id"].startswith("train-worker-0-")
    assert answer["identity"].startswith(answer["id"] + ".")
    assert tree(root) == {}


async def test_registration_takes_the_shared_token_and_a_well_formed_body(
    head: Receiver, session: aiohttp.ClientSession
) -> None:
    worker = await head.register()
    register = f"{head.url}/v1/register"
    assert (await request(session, "POST", register, worker))[0] == 403
    assert (await request(session, "POST", register, SHARED, b"[1]"))[0] == 400
    assert (await request(session, "POST", register, SHARED, b'{"name": 7}'))[0] == 400
    status, answer = await request(session, "POST", register, SHARED, b'{"name": "a b/../c"}')
    assert status == 201
    assert answer["id"].startswith("a-b-..-c-")  # made safe for the logs


async def test_a_forged_or_foreign_identity_gets_401_and_writes_nothing(
    tmp_path: pathlib.Path, root: pathlib.Path, head: Receiver, session: aiohttp.ClientSession
) -> None:
    identity = (await head.register("honest"))["Authorization"].removeprefix("Bearer ")
    worker_id, _, mac = identity.rpartition(".")
    other_root = tmp_path / "other-head"
    other = await Receiver.start(other_root)  # another head: another key
    foreign = (await other.register("honest"))["Authorization"].removeprefix("Bearer ")
    await other.stop()
    forgeries = [
        f"{worker_id}x.{mac}",  # another id with a copied mac
        f"{worker_id}.{mac[:-1]}{'0' if mac[-1] != '0' else '1'}",
        worker_id,
        f"{worker_id}.",
        foreign,
    ]
    for forged in forgeries:
        auth = {"Authorization": f"Bearer {forged}"}
        assert (await request(session, "PUT", head.objects("exp/t/x"), auth, b"x"))[0] == 401
    assert tree(root) == {}


async def test_no_worker_writes_experiment_state_or_outside_trial_dirs(
    root: pathlib.Path, head: Receiver, session: aiohttp.ClientSession
) -> None:
    (root / "exp").mkdir()
    (root / "exp" / "experiment_state.json").write_bytes(b"the head's")
    worker = await head.register()
    for rel in ("exp/experiment_state.json", "exp/new.json", "top.txt"):
        for method in ("PUT", "DELETE"):
            status, answer = await request(session, method, head.objects(rel), worker, b"x")
            assert status == 403, (method, rel)
            assert answer["reason"] == "head_only"
            assert answer["error"].startswith(f"{rel}: only the head writes")
    url = head.objects("exp/experiment_state.json")
    async with session.get(url, headers=worker) as response:
        assert await response.read() == b"the head's"  # reading is fine
    assert tree(root) == {"exp/experiment_state.json": b"the head's"}


async def test_a_trial_dir_belongs_to_the_first_worker_that_writes_in_it(
    root: pathlib.Path, head: Receiver, session: aiohttp.ClientSession
) -> None:
    first, second = await head.register("first"), await head.register("second")
    assert (await request(session, "PUT", head.objects("exp/t1/a"), first, b"1"))[0] == 201
    for method in ("PUT", "DELETE"):
        status, answer = await request(session, method, head.objects("exp/t1/a"), second, b"2")
        assert status == 403
        assert answer["reason"] == "claimed"
        assert answer["error"].startswith("exp/t1/a: trial dir exp/t1 is claimed by first-")
        assert holder_of(first) in answer["error"]
    assert (await request(session, "PUT", head.objects("exp/t2/b"), second, b"2"))[0] == 201
    assert (await request(session, "PUT", head.objects("exp/t1/c"), first, b"3"))[0] == 201
    assert tree(root) == {"exp/t1/a": b"1", "exp/t1/c": b"3", "exp/t2/b": b"2"}


async def test_a_released_claim_lets_another_worker_take_the_trial_dir_over(
    root: pathlib.Path, head: Receiver, session: aiohttp.ClientSession
) -> None:
    first, second = await head.register("first"), await head.register("second")
    await request(session, "PUT", head.objects("exp/t1/a"), first, b"1")
    await request(session, "PUT", head.objects("exp/t2/a"), first, b"1")
    status, answer = await request(session, "DELETE", f"{head.url}/v1/claims", first)
    assert (status, answer) == (200, {"released": ["exp/t1", "exp/t2"]})
    assert (await request(session, "PUT", head.objects("exp/t1/a"), second, b"2"))[0] == 201
    status, answer = await request(session, "PUT", head.objects("exp/t1/a"), first, b"3")
    assert status == 403
    assert holder_of(second) in answer["error"]
    assert tree(root) == {"exp/t1/a": b"2", "exp/t2/a": b"1"}


LEASE = 3.0


@pytest.fixture
async def short_lease(root: pathlib.Path) -> AsyncIterator[Receiver]:
    """A receiver whose claims lapse after a few seconds without a write (long enough that a
    busy machine's stall between two requests does not lapse one)."""
    receiver = await Receiver.start(root, claim_lease=LEASE, idle_timeout=30.0)
    yield receiver
    await receiver.stop()


async def test_a_lapsed_claim_passes_to_the_next_writer_and_refuses_the_old_holder(
    root: pathlib.Path, short_lease: Receiver, session: aiohttp.ClientSession
) -> None:
    first, second = await short_lease.register("first"), await short_lease.register("second")
    url = short_lease.objects("exp/t/a")
    await request(session, "PUT", url, first, b"1")
    assert (await request(session, "PUT", url, second, b"2"))[0] == 403
    await asyncio.sleep(LEASE + 0.3)  # no write from the holder for a whole lease
    assert (await request(session, "PUT", url, second, b"2"))[0] == 201
    status, answer = await request(session, "PUT", url, first, b"3")
    assert status == 403
    assert holder_of(second) in answer["error"]
    assert tree(root) == {"exp/t/a": b"2"}


async def test_a_claim_does_not_lapse_while_its_holder_uploads(
    root: pathlib.Path, short_lease: Receiver, session: aiohttp.ClientSession
) -> None:
    first, second = await short_lease.register("first"), await short_lease.register("second")
    length = {"Content-Length": "30"}
    reader, writer = await open_put(short_lease.port, "exp/t/big", first, length, b"x" * 10)
    await asyncio.sleep(LEASE + 0.5)  # longer than the lease, with the upload in progress
    url = short_lease.objects("exp/t/b")
    assert (await request(session, "PUT", url, second, b"2"))[0] == 403
    writer.write(b"y" * 20)
    assert (await read_answer(reader))[0] == 201
    writer.close()
    # The lease starts again when the upload ends.
    assert (await request(session, "PUT", url, second, b"2"))[0] == 403
    assert tree(root) == {"exp/t/big": b"x" * 10 + b"y" * 20}


async def test_claims_and_identities_survive_a_head_restart(root: pathlib.Path) -> None:
    head = await Receiver.start(root)
    first, second = await head.register("first"), await head.register("second")
    async with aiohttp.ClientSession() as session:
        assert (await request(session, "PUT", head.objects("exp/t/a"), first, b"1"))[0] == 201
        await head.stop()
        head = await Receiver.start(root)
        try:
            assert (await request(session, "PUT", head.objects("exp/t/b"), first, b"2"))[0] == 201
            status, answer = await request(session, "PUT", head.objects("exp/t/c"), second, b"3")
            assert status == 403
            assert holder_of(first) in answer["error"]
        finally:
            await head.stop()
    state = root / ".trialsync-head"
    for name in ("key", "claims.json"):
        assert stat.S_IMODE((state / name).stat().st_mode) == 0o600, name
    saved = json.loads((state / "claims.json").read_bytes())
    assert saved["claims"]["exp/t"]["holder"] == holder_of(first)


async def test_an_unreadable_claims_file_is_set_aside_and_the_head_still_serves(
    root: pathlib.Path,
) -> None:
    state = root / ".trialsync-head"
    state.mkdir()
    (state / "claims.json").write_bytes(b"{not json")
    head = await Receiver.start(root)
    try:
        worker = await head.register()
        async with aiohttp.ClientSession() as session:
            assert (await request(session, "PUT", head.objects("exp/t/a"), worker, b"1"))[0] == 201
    finally:
        await head.stop()
    assert [p.name for p in state.glob("claims.json.unreadable-*")]
    assert holder_of(worker) in (state / "claims.json").read_text()


# -- HeadStore, the worker's side -----------------------------------------------------------


async def test_head_store_keeps_its_identity_for_a_restarted_sidecar(
    tmp_path: pathlib.Path, head: Receiver
) -> None:
    identity_file = tmp_path / "scratch" / "identity.json"
    first = HeadStore(head.url, TOKEN, identity_file=str(identity_file), name="pod-a")
    await first.put_bytes("exp/t/a", b"1")
    kept = json.loads(identity_file.read_bytes())
    assert stat.S_IMODE(identity_file.stat().st_mode) == 0o600
    assert kept["identity"].startswith("pod-a-")
    # A restarted sidecar (same scratch dir) is the same worker: the trial dir is still its.
    again = HeadStore(head.url, TOKEN, identity_file=str(identity_file))
    other = HeadStore(head.url, TOKEN)
    try:
        await again.put_bytes("exp/t/b", b"2")
        with pytest.raises(PermissionError):
            await other.put_bytes("exp/t/c", b"3")
        assert json.loads(identity_file.read_bytes()) == kept
    finally:
        for store in (first, again, other):
            await store.close()


async def test_head_store_registers_again_when_the_head_lost_its_state(
    tmp_path: pathlib.Path, root: pathlib.Path
) -> None:
    head = await Receiver.start(root)
    identity_file = tmp_path / "identity.json"
    store = HeadStore(head.url, TOKEN, identity_file=str(identity_file))
    try:
        await store.put_bytes("exp/t/a", b"1")
        before = identity_file.read_bytes()
        await head.stop()
        for path in sorted((root / ".trialsync-head").iterdir()):
            path.unlink()  # a new volume: a new key, no claims
        head = await Receiver.start(root, port=head.port)
        await store.put_bytes("exp/t/b", b"2")
        assert identity_file.read_bytes() != before
    finally:
        await store.close()
        await head.stop()
    assert tree(root) == {"exp/t/a": b"1", "exp/t/b": b"2"}


async def test_head_store_refusals_are_permission_errors_naming_path_and_holder(
    tmp_path: pathlib.Path, root: pathlib.Path, head: Receiver, session: aiohttp.ClientSession
) -> None:
    theirs = "exp/train_fn_0_lr=0.01,bs=32"
    holder = await head.register("holder")
    await request(session, "PUT", head.objects(f"{theirs}/a"), holder, b"1")
    local = tmp_path / "model.pt"
    local.write_bytes(b"m" * 2_000_000)
    metrics = Metrics()
    store = HeadStore(head.url, TOKEN, metrics=metrics)
    rel = f"{theirs}/checkpoint_000001/model.pt"
    try:
        with pytest.raises(ObjectRefused) as refused:
            await store.put_file(str(local), rel)
        assert isinstance(refused.value, PermissionError)  # the vocabulary callers know
        assert (refused.value.rel, refused.value.reason) == (rel, "claimed")
        message = str(refused.value)
        assert "403" in message
        assert f"{rel}: trial dir {theirs} is claimed by {holder_of(holder)}" in message
        with pytest.raises(ObjectRefused, match="only the head writes") as refused:
            await store.delete(["exp/t/x", "exp/experiment_state.json"])
        assert (refused.value.rel, refused.value.reason) == (
            "exp/experiment_state.json",
            "head_only",
        )
        await store.put_file(str(local), "exp/mine/checkpoint_000001/model.pt")  # unaffected
    finally:
        await store.close()
    assert metrics.head_refusals.labels("claimed")._value.get() == 1
    assert metrics.head_refusals.labels("head_only")._value.get() == 1
    assert (root / "exp" / "mine" / "checkpoint_000001" / "model.pt").exists()
    assert not (root / theirs / "checkpoint_000001").exists()


async def test_a_refusal_names_the_path_relative_to_the_store_prefix(
    head: Receiver, session: aiohttp.ClientSession
) -> None:
    holder = await head.register("holder")
    await request(session, "PUT", head.objects("w/t/a"), holder, b"1")
    store = HeadStore(head.url, TOKEN, prefix="w")
    try:
        with pytest.raises(ObjectRefused) as refused:
            await store.put_bytes("t/b", b"2")
    finally:
        await store.close()
    assert refused.value.rel == "t/b"


async def test_head_store_close_releases_its_claims(
    root: pathlib.Path, head: Receiver, session: aiohttp.ClientSession
) -> None:
    store = HeadStore(head.url, TOKEN)
    await store.put_bytes("exp/t/a", b"1")
    other = await head.register()
    assert (await request(session, "PUT", head.objects("exp/t/b"), other, b"2"))[0] == 403
    await store.close()
    assert (await request(session, "PUT", head.objects("exp/t/b"), other, b"2"))[0] == 201


async def test_head_store_syncs_on_when_its_identity_cannot_be_kept(
    tmp_path: pathlib.Path, root: pathlib.Path, head: Receiver, caplog: pytest.LogCaptureFixture
) -> None:
    (tmp_path / "not-a-dir").write_bytes(b"")
    store = HeadStore(head.url, TOKEN, identity_file=str(tmp_path / "not-a-dir" / "identity"))
    try:
        await store.put_bytes("exp/t/a", b"1")
        await store.put_bytes("exp/t/b", b"2")  # the same identity, from memory
    finally:
        await store.close()
    assert tree(root) == {"exp/t/a": b"1", "exp/t/b": b"2"}
    assert "identity not kept" in caplog.text
