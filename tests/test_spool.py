"""Uploads of any size in bounded memory (issue 19): an upload larger than the aggregator's
``upload_memory_bytes`` is sealed to disk in blocks as it arrives, checked in one pass and added
to the round piece by piece; what it holds in memory is one chunk and one block, and the
aggregate is the same as an upload received whole. A block altered on disk is refused."""

from __future__ import annotations

import hashlib
import os
import time
from pathlib import Path

import numpy as np
import pytest

from aggregator.spool import SpoolError, StreamedUpdate, UpdateSpool
from enclave.simulated.attester import SimulatedSnpAttester
from federation import Deployment, run_aggregator
from protocol.compression import MODES, encode_update
from protocol.streams import StreamOpener, StreamSealer
from protocol.tensors import ModelSpec, ReceiveBuffers, UpdateFormatError

KEY, SESSION = os.urandom(32), os.urandom(16)


def _received(
    data: bytes,
    *,
    memory: int,
    chunk: int = 300_000,
    block: int = 65_536,
    limit: int | None = None,
    buffers: ReceiveBuffers | None = None,
) -> UpdateSpool:
    """``data`` sealed as a stream and received into a spool chunk by chunk."""
    limit = len(data) if limit is None else limit
    sealer = StreamSealer(KEY, session_id=SESSION, purpose="update", context=b"ctx")
    opener = StreamOpener(KEY, sealer.header, session_id=SESSION, purpose="update", context=b"ctx", max_bytes=limit)
    buffers = buffers or ReceiveBuffers(most_buffers=1, most_bytes=1 << 30)
    spool = UpdateSpool(limit, memory_bytes=memory, block=block, buffers=buffers)
    pieces = [data[i : i + chunk] for i in range(0, len(data), chunk)]
    for index, piece in enumerate(pieces):
        final = index == len(pieces) - 1
        _index, ciphertext = sealer.seal(piece, final=final)
        spool.receive(opener, index, ciphertext, final=final)
        assert spool.memory_bytes <= max(memory, 4 * 1024 * 1024 + 2 * block)
    opener.finish()
    return spool


@pytest.mark.parametrize("memory", [1 << 30, 1 << 20])
def test_a_spool_reads_back_what_arrived(memory: int) -> None:
    data = os.urandom(2_500_000)
    spool = _received(data, memory=memory)
    assert spool.spooled == (memory < len(data))
    assert spool.finish() == hashlib.sha256(data).digest()
    for offset, length in [(0, 8), (65_530, 20), (1_000_000, 400_000), (len(data) - 5, 5), (0, len(data))]:
        assert bytes(spool.read(offset, length)) == data[offset : offset + length]
    with pytest.raises(SpoolError):
        spool.read(len(data) - 1, 2)
    spool.close()


def test_a_receive_buffer_is_reused_only_when_nothing_refers_to_it() -> None:
    buffers = ReceiveBuffers(most_buffers=3, most_bytes=5_000_000)
    first = buffers.take(2_000_000)
    view = first[:10]  # a user still holds a view: the buffer is not free
    del first
    second = buffers.take(2_000_000)
    assert view.obj is not second.obj
    del view
    third = buffers.take(2_000_000)  # the first one, nobody refers to it now
    assert buffers.kept_bytes == 4_000_000
    fourth = buffers.take(2_000_000)  # the second is still held (``second``): a new one, over the bytes
    assert fourth.obj is not second.obj and fourth.obj is not third.obj and buffers.kept_bytes == 4_000_000
    del second, third, fourth
    small = buffers.take(500_000)  # another size: a new buffer; three kept at most
    assert buffers.kept_bytes == 4_500_000
    del small
    assert buffers.take(6_000_000).nbytes == 6_000_000 and buffers.kept_bytes == 4_500_000  # over most_bytes: not kept


def _address(view: memoryview) -> int:
    return int(np.frombuffer(view, np.uint8).ctypes.data)


def test_an_upload_written_over_a_kept_buffer_shows_only_its_own_bytes() -> None:
    buffers = ReceiveBuffers(most_buffers=1, most_bytes=1 << 30)
    first = _received(os.urandom(2_000_000), memory=1 << 30, limit=2_000_000, buffers=buffers)
    first.finish()
    assert first._memory is not None
    address = _address(first._memory)  # not a reference: holding one would keep the buffer busy
    first.close()
    data = os.urandom(700_000)
    second = _received(data, memory=1 << 30, limit=2_000_000, buffers=buffers)
    assert second._memory is not None and _address(second._memory) == address  # written over
    assert second.finish() == hashlib.sha256(data).digest() and second.size == len(data)
    assert bytes(second.read(0, len(data))) == data
    with pytest.raises(SpoolError):
        second.read(len(data), 1)  # what the first upload left beyond this one's bytes
    # A piece of the update still alive after the spool closed: the next upload gets a new buffer.
    piece = np.frombuffer(second.read(0, 4000), np.float32)
    second.close()
    third = _received(os.urandom(1000), memory=1 << 30, limit=2_000_000, buffers=buffers)
    assert third._memory is not None and not np.shares_memory(np.frombuffer(third._memory, np.uint8), piece)
    assert piece.tobytes() == data[:4000]


def test_a_block_altered_on_disk_is_refused() -> None:
    spool = _received(os.urandom(500_000), memory=100_000)
    spool.finish()
    assert spool.spooled
    fd = spool._fd  # the unlinked file: what the host could change on its disk
    assert fd is not None
    os.pwrite(fd, b"\x00", 3 * (65_536 + 16) + 7)
    with pytest.raises(SpoolError, match="block 3 of a spooled upload was altered on disk"):
        spool.read(3 * 65_536, 10)
    assert bytes(spool.read(0, 10))  # the others still read
    spool.close()


@pytest.mark.parametrize("mode", sorted(MODES))
def test_a_streamed_update_decodes_as_the_whole_one(mode: str) -> None:
    from protocol.compression import decode_update

    rng = np.random.default_rng(5)
    update = {"a": rng.normal(size=(700, 300)).astype(np.float32), "b": rng.normal(size=5000).astype(np.float32)}
    spec = ModelSpec.of(update)
    data = b"".join(bytes(p) for p in encode_update(update, {"weight": "2"}, mode))
    spool = _received(data, memory=100_000)
    spool.finish()
    streamed = StreamedUpdate(spool, spec, mode)
    streamed.check()
    whole, metadata = decode_update(data, spec, mode)
    flat = np.concatenate([whole["a"].reshape(-1), whole["b"]])
    np.testing.assert_array_equal(streamed.vector(), flat)
    assert streamed.metadata["weight"] == "2" and metadata["weight"] == "2"
    assert streamed.norm == pytest.approx(float(np.linalg.norm(flat.astype(np.float64))), rel=1e-9)
    coordinates = np.sort(rng.choice(flat.size, 50, replace=False))
    np.testing.assert_array_equal(streamed.gather(coordinates), flat[coordinates])


def test_a_non_finite_value_is_refused_before_the_receipt() -> None:
    update = {"w": np.ones(600_000, np.float32)}
    update["w"][512_345] = np.nan
    data = b"".join(bytes(p) for p in encode_update(update, {}, "float32"))
    spool = _received(data, memory=100_000)
    spool.finish()
    with pytest.raises(UpdateFormatError, match="non-finite"):
        StreamedUpdate(spool, ModelSpec.of(update), "float32").check()


def _run(
    tmp_path: Path, name: str, memory_line: str, updates: dict[str, dict[str, np.ndarray]], task: str
) -> tuple[dict[str, np.ndarray], list[bool]]:
    """One round of the three sites' updates; the model after it, and whether each update was spooled."""
    deployment = Deployment(
        tmp_path / name,
        tmp_path / "sim",
        model={"w": np.zeros((600, 1000), np.float32), "b": np.zeros(10, np.float32)},
        sites={"site-a": "", "site-b": "", "site-c": ""},
        task=task,
        aggregator_extra=memory_line,
    )
    deployment.directory.mkdir()
    for aggregator in run_aggregator(deployment):
        clients = [
            deployment.client(aggregator.target, site_id=s, attester=SimulatedSnpAttester(deployment.sim_dir))
            for s in updates
        ]
        for client in clients:
            client.join()
            client.task()
        spec = ModelSpec.from_json(clients[0].task().model_spec)
        for weight, (client, site) in enumerate(zip(clients, updates, strict=True), start=1):
            client.upload_update(1, updates[site], weight=weight)
        deadline = time.time() + 60
        while clients[0].task().round == 1 and time.time() < deadline:
            time.sleep(0.05)
        model = clients[0].download_model(2, spec)
        for client in clients:
            client.close()
        spooled = [e["spooled"] for e in aggregator.events() if e["message"] == "update_accepted"]
        return model, spooled


@pytest.mark.parametrize("task_extra", ["", "\nclip_norm = 5.0"])
def test_spooled_uploads_aggregate_as_uploads_held_in_memory(tmp_path: Path, task_extra: str) -> None:
    rng = np.random.default_rng(11)
    updates = {
        site: {"w": rng.normal(size=(600, 1000)).astype(np.float32), "b": rng.normal(size=10).astype(np.float32)}
        for site in ("site-a", "site-b", "site-c")
    }
    task = 'rounds = 2\nmin_sites = 3\nround_deadline = "120s"' + task_extra
    held, held_flags = _run(tmp_path, "held", "", updates, task)
    spooled, spooled_flags = _run(
        tmp_path, "spooled", f'upload_memory_bytes = {1 << 20}\nspool_dir = "spool"', updates, task
    )
    assert held_flags == [False] * 3 and spooled_flags == [True] * 3  # 2.4 MB updates: over 1 MiB, under 64 MiB
    assert not any((tmp_path / "spooled" / "spool").iterdir())  # unlinked at once: nothing to read there
    for name in held:
        np.testing.assert_allclose(spooled[name], held[name], rtol=1e-6, atol=1e-6)
    if not task_extra:
        expected = sum(w * updates[s]["w"] for w, s in enumerate(updates, start=1)) / 6
        np.testing.assert_allclose(spooled["w"], expected, rtol=1e-5, atol=1e-6)


def test_a_spooled_update_altered_between_check_and_apply_stops_the_round() -> None:
    """The host alters a sealed block after the update was checked and receipted: the driver
    stops (FailStop) with the update half-applied, and never commits that round."""
    from aggregator.rounds import RoundDriver, TaskConfig
    from aggregator.service import FailStop, UpdateRefused

    model = {"w": np.zeros(300_000, np.float32)}
    config = TaskConfig(initial_model=model, rounds=2, min_sites=1)
    config.validate()
    driver = RoundDriver(config)
    data = b"".join(bytes(p) for p in encode_update({"w": np.ones(300_000, np.float32)}, {}, "float32"))
    spool = _received(data, memory=100_000)
    digest = spool.finish()
    streamed = StreamedUpdate(spool, driver.spec, "float32")
    streamed.check()
    assert spool._fd is not None
    os.pwrite(spool._fd, b"\xff", 10 * (65_536 + 16) + 3)
    with pytest.raises(FailStop, match="could not be applied"):
        driver.accept_update("a", 1, 1, streamed, 1.0, digest, {})
    with pytest.raises(UpdateRefused, match="stopping"):
        driver.check_upload("b", 1, 1)
    driver.close_if_complete()
    assert driver.round == 1  # nothing committed
