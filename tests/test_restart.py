"""Restart without trusting the host's disk: the aggregator is killed mid-round and restarted;
sites re-attest it (new enclave keys, new evidence), the interrupted round is retried from the
sealed checkpoint, training completes. And a checkpoint other code cannot unseal is refused."""

from __future__ import annotations

import socket
import subprocess
import sys
import threading
import time
from pathlib import Path

import numpy as np
import pytest

from aggregator.checkpoint import FILE_NAME, Checkpoint, CheckpointError, load_checkpoint, save_checkpoint
from attestfl.demo import breast_cancer_trainer, split_non_iid
from enclave.sealing import SimulatedSealingKey, SnpDerivedKeyReq, derived_key_request
from enclave.simulated.attester import SimulatedSnpAttester
from federation import Deployment
from fedsite.sdk import run_site


def _free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return probe.getsockname()[1]


def test_sealing_key_is_bound_to_the_measurement(tmp_path: Path) -> None:
    a = SimulatedSealingKey(tmp_path, b"\x01" * 48)
    assert a.key(b"checkpoint") == SimulatedSealingKey(tmp_path, b"\x01" * 48).key(b"checkpoint")
    assert a.key(b"checkpoint") != SimulatedSealingKey(tmp_path, b"\x02" * 48).key(b"checkpoint")
    assert a.key(b"checkpoint") != a.key(b"other")
    assert (tmp_path / "sealing-root.key").stat().st_mode & 0o777 == 0o600


def test_checkpoint_round_trip_and_refusals(tmp_path: Path) -> None:
    sealing = SimulatedSealingKey(tmp_path, b"\x01" * 48)
    state = tmp_path / "state"
    assert load_checkpoint(state, sealing) is None
    saved = Checkpoint(3, 2, b"model-bytes", "2026-11-23T00:00:00+00:00")
    save_checkpoint(state, sealing, saved)
    assert load_checkpoint(state, sealing) == saved
    with pytest.raises(CheckpointError, match="other code"):
        load_checkpoint(state, SimulatedSealingKey(tmp_path, b"\x02" * 48))
    data = bytearray((state / FILE_NAME).read_bytes())
    data[-1] ^= 1
    (state / FILE_NAME).write_bytes(bytes(data))
    with pytest.raises(CheckpointError, match="tampered"):
        load_checkpoint(state, sealing)


def test_snp_derived_key_request_layout() -> None:
    request = derived_key_request(vmpl=1)
    raw = bytes(request)
    assert len(raw) == 32 == __import__("ctypes").sizeof(SnpDerivedKeyReq)
    assert raw[0:4] == b"\0\0\0\0"  # root_key_select: VCEK
    assert int.from_bytes(raw[8:16], "little") == 0b1001  # measurement + guest policy
    assert int.from_bytes(raw[16:20], "little") == 1


def _site(target: str, site_id: str, deployment: Deployment, npz: Path, results: dict, slow_round: int | None) -> None:
    trainer = breast_cancer_trainer({"file": npz.name, "seed": 1}, npz.parent)
    original = trainer.train
    calls = {"n": 0}

    def train(model):  # noqa: ANN001, ANN202
        calls["n"] += 1
        if slow_round is not None and calls["n"] == slow_round:
            time.sleep(6)  # this site is slow in round 2: the aggregator is killed meanwhile
        return original(model)

    trainer.train = train
    try:
        with deployment.client(
            target, site_id=site_id, policy=deployment.site_policy(), attester=SimulatedSnpAttester(deployment.sim_dir)
        ) as client:
            results[site_id] = run_site(client, trainer, progress=None, reconnect_seconds=60)
    except Exception as exc:  # noqa: BLE001 - reported by the test
        results[site_id] = exc


def test_aggregator_killed_mid_round_and_restarted(tmp_path: Path) -> None:
    port = _free_port()
    deployment = Deployment(
        tmp_path,
        tmp_path / "vendor",
        sites={"site-a": "", "site-b": ""},
        listen=f"127.0.0.1:{port}",
        task='rounds = 3\nmin_sites = 2\nround_deadline = "120s"',
    )
    from attestfl.demo import make_model

    deployment.model = {k: v.detach().numpy().astype(np.float32) for k, v in make_model().state_dict().items()}
    splits, _, _ = split_non_iid(2)
    for name, split in zip(("site-a", "site-b"), splits, strict=True):
        np.savez(tmp_path / f"{name}.npz", **split)
    first = deployment.start()
    results: dict = {}
    threads = [
        threading.Thread(
            target=_site, args=(first.target, "site-a", deployment, tmp_path / "site-a.npz", results, None)
        ),
        threading.Thread(target=_site, args=(first.target, "site-b", deployment, tmp_path / "site-b.npz", results, 2)),
    ]
    for thread in threads:
        thread.start()
    try:
        deadline = time.time() + 60
        while time.time() < deadline:  # round 1 done and site-a's round-2 update accepted
            events = first.events()
            if any(e["message"] == "update_accepted" and e["round"] == 2 for e in events):
                break
            time.sleep(0.1)
        else:
            raise AssertionError(f"round 2 never started: {results}")
        first.process.kill()  # SIGKILL mid-round: round 2 has one of its two updates
        first.process.wait()
        (tmp_path / "first.stderr").write_bytes(first.stderr_path.read_bytes())
        second = deployment.start()
        try:
            for thread in threads:
                thread.join(timeout=120)
            assert not any(t.is_alive() for t in threads)
            events = second.events()
        finally:
            second.stop()
    finally:
        first.stop()
    assert second.ready["ed25519"] != first.ready["ed25519"]  # new enclave keys ...
    assert second.ready["measurement"] == first.ready["measurement"]  # ... same measured code
    for site_id in ("site-a", "site-b"):
        summary = results[site_id]
        assert not isinstance(summary, Exception), summary
        assert summary.joins == 2  # re-verified the new evidence and re-joined
    restart = [e for e in events if e["message"] == "restart"]
    assert restart and restart[0]["resumed_round"] == 2
    rounds = [e["round"] for e in events if e["message"] == "round"]
    assert rounds == [2, 3]  # the interrupted round is retried, then training completes
    assert any(e["message"] == "training_finished" for e in events)
    assert {s for e in events if e["message"] == "round" and e["round"] == 2 for s in e["participants"]} == {
        "site-a",
        "site-b",
    }


def test_unsealable_checkpoint_stops_the_aggregator(tmp_path: Path) -> None:
    deployment = Deployment(tmp_path, tmp_path / "vendor", sites={"site-a": ""})
    config = deployment.write()
    (tmp_path / "state").mkdir()
    (tmp_path / "state" / FILE_NAME).write_bytes(b"AFCK1" + bytes(64))
    result = subprocess.run(
        [sys.executable, "-m", "attestfl.cli", "serve", "--config", str(config)],
        capture_output=True,
        text=True,
        timeout=120,
        cwd=tmp_path,
    )
    assert result.returncode == 2 and "cannot be unsealed" in result.stderr and "Traceback" not in result.stderr
    assert "ready" not in result.stdout
