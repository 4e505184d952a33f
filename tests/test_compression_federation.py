"""Compressed updates through the real aggregator (issue 19): the task's ``compression`` reaches
the sites in GetTask, a site encodes its update in it (error feedback on), the aggregator decodes
to float32 and aggregates in float32; an update in another encoding is refused with a reason."""

from __future__ import annotations

import time
from pathlib import Path
from typing import Any

import grpc
import numpy as np
import pytest

from enclave.simulated.attester import SimulatedSnpAttester
from federation import Deployment, run_aggregator
from protocol.compression import roundtrip
from protocol.tensors import ModelSpec


def _wait_for_round(client: Any, round_number: int, timeout: float = 30) -> None:
    deadline = time.time() + timeout
    while client.task().round == round_number and time.time() < deadline:
        time.sleep(0.05)


@pytest.mark.parametrize("mode", ["int8", "bfloat16"])
def test_a_round_with_compressed_updates(mode: str, tmp_path: Path) -> None:
    deployment = Deployment(
        tmp_path / "deployment",
        tmp_path / "sim",
        sites={"site-a": "", "site-b": ""},
        task=f'rounds = 2\nmin_sites = 2\nround_deadline = "120s"\ncompression = "{mode}"',
    )
    deployment.directory.mkdir()
    rng = np.random.default_rng(3)
    updates = {
        site: {n: rng.standard_normal(a.shape).astype(np.float32) for n, a in deployment.model.items()}
        for site in ("site-a", "site-b")
    }
    for aggregator in run_aggregator(deployment):
        a, b = (
            deployment.client(aggregator.target, site_id=s, attester=SimulatedSnpAttester(deployment.sim_dir))
            for s in ("site-a", "site-b")
        )
        for site in (a, b):
            site.join()
        task = a.task()
        b.task()
        assert task.compression == mode and a.compression == mode
        spec = ModelSpec.from_json(task.model_spec)
        before = a.download_model(1, spec)
        receipts = [a.upload_update(1, updates["site-a"], weight=1), b.upload_update(1, updates["site-b"], weight=3)]
        assert all(r.round == 1 for r in receipts)
        _wait_for_round(a, 1)
        after = a.download_model(2, spec)
        for name in before:
            sent = [roundtrip(updates[s][name], mode) for s in ("site-a", "site-b")]
            expected = before[name] + (1 * sent[0] + 3 * sent[1]) / 4
            np.testing.assert_allclose(after[name], expected, rtol=1e-6, atol=1e-6)
            assert after[name].dtype == np.float32
        # an update encoded otherwise (float32 here) is refused, with the reason
        a.task()
        a.compression = "float32"
        with pytest.raises(grpc.RpcError) as caught:
            a.upload_update(2, updates["site-a"], weight=1)
        assert f"the task asks for '{mode}'" in caught.value.details()
        for site in (a, b):
            site.close()


def test_the_task_compression_is_checked_when_the_file_is_loaded(tmp_path: Path) -> None:
    from test_config_validation import refused, write

    assert refused(write(tmp_path, task={"compression": '"int4"'})) == (
        '[task] compression: expected one of "float32", "float16", "bfloat16", "int8", got "int4"'
    )
    from aggregator.config import AggregatorConfig

    assert AggregatorConfig.load(write(tmp_path, task={"compression": '"bfloat16"'})).task.compression == "bfloat16"


def test_a_refused_upload_leaves_the_error_feedback_as_it_was(tmp_path: Path) -> None:
    deployment = Deployment(
        tmp_path / "deployment",
        tmp_path / "sim",
        sites={"site-a": ""},
        task='rounds = 1\nmin_sites = 1\nround_deadline = "120s"\ncompression = "int8"',
    )
    deployment.directory.mkdir()
    for aggregator in run_aggregator(deployment):
        a = deployment.client(aggregator.target, site_id="site-a", attester=SimulatedSnpAttester(deployment.sim_dir))
        a.join()
        a.task()
        update = {n: np.full(v.shape, 0.3, np.float32) for n, v in deployment.model.items()}
        with pytest.raises(grpc.RpcError):
            a.upload_update(7, update, weight=1)  # round 7 is not open: refused
        assert a.feedback.residual == {}
        a.upload_update(1, update, weight=1)
        assert set(a.feedback.residual) == set(update)
        a.close()
