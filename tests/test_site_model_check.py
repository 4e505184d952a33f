"""A site whose trainer holds another model than the task's stops before it trains (exit 2, one
line naming the differing tensors and what to do), against the real `attestfl serve`; the
comparison itself (names, shapes, dtypes) on torch modules."""

from __future__ import annotations

import json
import subprocess
from pathlib import Path

import pytest
import torch

from fedsite.model_check import ModelMismatch, check_trainer_model, differences, trainer_tensors
from fedsite.sdk import TorchTrainer
from protocol.tensors import ModelSpec, TensorSpec
from tests.test_operator_journey import free_port, printed_commands, sh, shim


def spec_of(module: object) -> ModelSpec:
    local = trainer_tensors(TorchTrainer(module, train=lambda m: 1))
    assert local is not None
    return ModelSpec(tuple(TensorSpec(name, "F32", shape) for name, (shape, _dtype) in local.items()))


def test_the_same_model_passes_and_buffers_of_any_real_dtype_are_accepted() -> None:
    def build() -> object:
        return torch.nn.Sequential(torch.nn.Linear(4, 8), torch.nn.BatchNorm1d(8), torch.nn.Linear(8, 2))

    spec = spec_of(build())
    assert "1.num_batches_tracked" in {t.name for t in spec.tensors}  # an int64 buffer, float32 on the wire
    check_trainer_model(TorchTrainer(build(), train=lambda m: 1), spec)
    check_trainer_model(TorchTrainer(build().double(), train=lambda m: 1), spec)
    check_trainer_model(object(), spec)  # no state_dict (the Flower adapter checks its own arrays)
    as_written = ModelSpec(  # attestfl model init writes a scalar buffer as one element
        tuple(TensorSpec(t.name, "F32", t.shape or (1,)) for t in spec.tensors)
    )
    assert any(t.name == "1.num_batches_tracked" and t.shape == (1,) for t in as_written.tensors)
    check_trainer_model(TorchTrainer(build(), train=lambda m: 1), as_written)


def test_differences_name_each_tensor() -> None:
    spec = spec_of(torch.nn.Sequential(torch.nn.Linear(4, 8), torch.nn.Linear(8, 2)))
    other = torch.nn.Sequential(torch.nn.Linear(4, 16), torch.nn.Linear(16, 2), torch.nn.Linear(2, 2))
    found = differences(trainer_tensors(TorchTrainer(other, train=lambda m: 1)) or {}, spec)
    assert found == [
        "0.weight is [16, 4] in the trainer, [8, 4] in the task",
        "0.bias is [16] in the trainer, [8] in the task",
        "1.weight is [2, 16] in the trainer, [2, 8] in the task",
        "2.weight [2, 2] not in the task's model",
        "2.bias [2] not in the task's model",
    ]
    assert "missing from the trainer's model" in differences({}, spec)[0]
    bigger = torch.nn.Sequential(torch.nn.Linear(4, 8), torch.nn.Linear(8, 2), torch.nn.Linear(2, 2))
    federated = ModelSpec(spec.tensors[:2])  # an adapter task federates a subset; the rest stays at the site
    check_trainer_model(TorchTrainer(bigger, train=lambda m: 1), federated, subset=True)
    with pytest.raises(ModelMismatch, match=r"2\.weight \[2, 2\] not in the task's model"):
        check_trainer_model(TorchTrainer(bigger, train=lambda m: 1), federated)
    complex_model = {"0.weight": ((8, 4), "complex64"), "0.bias": ((8,), "float32")}
    assert differences(complex_model, ModelSpec(spec.tensors[:2])) == [
        "0.weight has dtype complex64 (only real and integer tensors travel, as float32)"
    ]
    with pytest.raises(ModelMismatch, match=r"and 1 more\. Nothing was trained or sent\. .*attestfl model init"):
        check_trainer_model(TorchTrainer(other, train=lambda m: 1), spec)


def test_a_site_with_another_model_exits_2_before_training(tmp_path: Path) -> None:
    env = shim(tmp_path)
    port = free_port()
    new_aggregator = sh(
        f"attestfl new aggregator agg --rounds 1 --min-sites 1 --listen 127.0.0.1:{port}", tmp_path, env
    )
    init, add_site, _check, _measure, serve = printed_commands(new_aggregator.stdout)
    enroll, pin, _site_check, run = printed_commands(
        sh(f"attestfl new site site --id hospital-a --aggregator 127.0.0.1:{port}", tmp_path, env).stdout
    )
    model = tmp_path / "site" / "model.py"
    model.write_text(model.read_text().replace("HIDDEN = 32", "HIDDEN = 16"))  # the site built another model
    sh(init, tmp_path, env)
    sh(enroll, tmp_path, env)
    sh(add_site.replace("<enrolment.json>", "site/enrolment.json"), tmp_path, env)
    sh(pin.replace("<aggregator.toml>", "agg/aggregator.toml"), tmp_path, env)
    server = subprocess.Popen(
        ["bash", "-c", serve],
        cwd=tmp_path,
        env=env,
        stdout=subprocess.DEVNULL,
        stderr=(tmp_path / "serve.err").open("w"),
        text=True,
    )
    try:
        done = subprocess.run(
            ["bash", "-c", run], cwd=tmp_path, env=env, capture_output=True, text=True, timeout=180, check=False
        )
    finally:
        server.kill()
        server.wait(timeout=30)
    assert done.returncode == 2, done.stdout + done.stderr
    errors = [line for line in done.stderr.splitlines() if line.startswith("attestfl: error:")]
    assert len(errors) == 1 and "Traceback" not in done.stderr, done.stderr
    assert "joined" in done.stderr  # it had the task: after verifying the aggregator and joining
    error = errors[0]
    assert "the trainer's model is not the federation's model" in error
    assert "0.weight is [16, 10] in the trainer, [32, 10] in the task" in error
    assert "attestfl model init" in error and "Nothing was trained or sent" in error
    events = [json.loads(line) for line in (tmp_path / "serve.err").read_text().splitlines() if line.startswith("{")]
    assert any(e.get("message") == "admission" and e.get("admitted") for e in events)
    assert not any(e.get("message") in ("update_accepted", "metrics") for e in events)
