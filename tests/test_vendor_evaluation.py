"""Vendor evaluation jobs on loopback, against a real `attestfl serve`: two vendors, three
evaluating sites (one below the small-cell threshold), an admitted site outside the vendor
policy, a site that is not admitted and a vendor that is not in the policy. Each vendor's
report holds only its own row; the plaintext models are never on the host's disk."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import grpc
import numpy as np
import pytest
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

from attestfl.loopback import read_events
from attestfl.vendor import VendorClient, VendorRefused, public_key
from auditor.verify import verify_log
from enclave.simulated.attester import SimulatedSnpAttester
from federation import Deployment, run_aggregator
from fedsite.client import AdmissionRefused
from fedsite.vendor_eval import EvaluationData, fetch_jobs, run_vendor_jobs, send_metrics
from protocol.tensors import encode_tensors
from protocol.vendor import (
    SealedArtefact,
    VendorError,
    decrypt_artefact,
    encrypt_artefact,
    new_content_key,
)
from protocol.wire import federation_pb2 as pb

ENTRY = "fedsite.vendor_models:mlp"
SITES = {"site-a": 80, "site-b": 60, "site-c": 12}  # site-c is below min_examples = 20
FEATURES = 6


def _data(seed: int, n: int) -> EvaluationData:
    rng = np.random.default_rng(seed)
    x = rng.normal(size=(n, FEATURES)).astype(np.float32)
    y = (x[:, 0] + 0.5 * x[:, 1] + rng.normal(scale=0.7, size=n) > 0).astype(np.int64)
    sex = np.where(rng.random(n) < 0.5, "F", "M")
    return EvaluationData(x, y, {"sex": sex})


def _model(seed: int, strength: float) -> bytes:
    rng = np.random.default_rng(seed)
    weight = np.zeros((2, FEATURES), np.float32)
    weight[1, 0], weight[1, 1] = strength, strength / 2
    weight += rng.normal(scale=0.05, size=weight.shape).astype(np.float32)
    return encode_tensors({"layers.0.weight": weight, "layers.0.bias": rng.normal(size=2).astype(np.float32)})


def _scan(directories: list[Path], needles: list[bytes]) -> list[str]:
    found = []
    for directory in directories:
        for path in directory.rglob("*"):
            if path.is_file():
                data = path.read_bytes()
                found += [f"{path}" for needle in needles if needle in data]
    return found


def test_artefact_round_trip_and_tampering() -> None:
    key = new_content_key()
    data = bytes(range(256)) * 9000  # over two chunks
    artefact = encrypt_artefact(data, key)
    assert len(artefact.chunks) == 3 and decrypt_artefact(artefact, key, max_bytes=len(data)) == data
    with pytest.raises(VendorError, match="truncated"):
        decrypt_artefact(SealedArtefact(artefact.header, artefact.chunks[:2]), key)
    with pytest.raises(VendorError, match="not authentic"):
        decrypt_artefact(SealedArtefact(artefact.header, artefact.chunks[::-1]), key)
    with pytest.raises(VendorError):
        decrypt_artefact(artefact, new_content_key())


@pytest.fixture(scope="module")
def evaluation(tmp_path_factory: pytest.TempPathFactory) -> dict:
    base = tmp_path_factory.mktemp("vendors")
    vendors = {"acme": Ed25519PrivateKey.generate(), "globex": Ed25519PrivateKey.generate()}
    keys = "\n".join(f'{name} = "{public_key(key).hex()}"' for name, key in vendors.items())
    task = (
        "rounds = 1\n[task.vendors]\n"
        f"sites = {json.dumps(list(SITES))}\nmin_examples = 20\nbootstrap = 100\n"
        'vendor_metrics = ["accuracy", "auroc"]\nreport_dir = "vendor-reports"\n'
        f"[task.vendors.keys]\n{keys}\n"
    )
    deployment = Deployment(
        base / "deployment", base / "sim", sites={**{s: "" for s in SITES}, "site-x": ""}, task=task
    )
    deployment.directory.mkdir()
    models = {"acme": _model(1, 2.0), "globex": _model(2, 0.4)}
    out: dict = {"deployment": deployment, "models": models, "sim": base / "sim"}
    for aggregator in run_aggregator(deployment):
        jobs = {}
        for name, key in vendors.items():
            with VendorClient(
                aggregator.target, vendor=name, signing_key=key, policy=deployment.site_policy()
            ) as vendor:
                jobs[name] = vendor.submit(models[name], name=f"{name}-detector", entry_point=ENTRY)
        out["jobs"] = jobs
        # A vendor whose key is not in the policy, and a known name signed with another key.
        for name in ("mallory", "acme"):
            impostor = Ed25519PrivateKey.generate()
            with VendorClient(
                aggregator.target, vendor=name, signing_key=impostor, policy=deployment.site_policy()
            ) as vendor:
                with pytest.raises(VendorRefused) as refused:
                    vendor.submit(_model(3, 1.0), name="x", entry_point=ENTRY)
                out[f"refused-{name}"] = refused.value.reasons
        # Bytes that are no manifest at all: refused with the reason, nothing decrypted.
        with VendorClient(
            aggregator.target, vendor="acme", signing_key=vendors["acme"], policy=deployment.site_policy()
        ) as vendor:
            out["garbage"] = vendor.stub.VendorSubmit(pb.VendorSubmission(manifest=b"{not json"), timeout=10)
        results = {}
        for index, (site, n) in enumerate(SITES.items()):
            with deployment.client(aggregator.target, site_id=site) as client:
                client.join()
                assert client.task().vendor_jobs == 2  # the task tells a site that jobs wait
                results[site] = run_vendor_jobs(client, _data(10 + index, n))
                assert client.task().vendor_jobs == 0
                if site == "site-a":  # a second report of the same job is refused
                    with pytest.raises(grpc.RpcError) as twice:
                        send_metrics(client, pb.VendorMetrics(job_id=jobs["acme"], examples=1))
                    out["twice"] = twice.value
        out["results"] = results
        with deployment.client(aggregator.target, site_id="site-x") as outsider:
            outsider.join()
            with pytest.raises(grpc.RpcError) as denied:
                fetch_jobs(outsider)
            out["outsider"] = denied.value
        # A site whose evidence fails admission (a debug-mode TEE) is not admitted: no session, no jobs.
        stranger = deployment.client(
            aggregator.target, site_id="site-a", attester=SimulatedSnpAttester(deployment.sim_dir, debug=True)
        )
        with pytest.raises(AdmissionRefused) as not_admitted:
            stranger.join()
        out["stranger"] = not_admitted.value.reasons
        with pytest.raises(Exception, match="join first"):
            fetch_jobs(stranger)
        stranger.close()
        reports = {}
        for name, key in vendors.items():
            with VendorClient(
                aggregator.target, vendor=name, signing_key=key, policy=deployment.site_policy()
            ) as vendor:
                reports[name] = vendor.wait_report(jobs[name], timeout=30)
                other = jobs["globex" if name == "acme" else "acme"]
                with pytest.raises(VendorRefused) as foreign:
                    vendor.report(other)
                out[f"foreign-{name}"] = foreign.value.reasons
        out["reports"] = reports
    out["network"] = json.loads((deployment.directory / "vendor-reports" / "network-report.json").read_text())
    out["html"] = (deployment.directory / "vendor-reports" / "network-report.html").read_text()
    return out


def test_each_vendor_gets_only_its_own_row(evaluation: dict) -> None:
    for name, report in evaluation["reports"].items():
        other = "globex" if name == "acme" else "acme"
        assert report["vendor"] == name and report["job"] == evaluation["jobs"][name]
        assert other not in json.dumps(report) and evaluation["jobs"][other] not in json.dumps(report)
        assert set(report["pooled"]["metrics"]) == {"accuracy", "auroc"}  # vendor_metrics only
        assert "sites" not in report  # vendor_per_site = false
        assert report["pooled"]["sites"] == 2 and report["pooled"]["examples"] == 140
        low, high = report["pooled"]["ci"]["auroc"]
        assert low <= report["pooled"]["metrics"]["auroc"] <= high
        assert evaluation[f"foreign-{name}"][0].startswith("vendor.job")
    acme, globex = (evaluation["reports"][v]["pooled"]["metrics"]["auroc"] for v in ("acme", "globex"))
    assert acme > globex  # acme's model uses the informative features more strongly


def test_network_report_compares_vendors_per_site(evaluation: dict) -> None:
    network = evaluation["network"]
    assert {row["vendor"] for row in network["vendors"]} == {"acme", "globex"}
    for row in network["vendors"]:
        assert set(row["sites"]) == set(SITES)
        assert "suppressed" in row["sites"]["site-c"]  # 12 examples < min_examples 20
        assert row["sites"]["site-a"]["examples"] == 80
        assert {"accuracy", "auroc", "loss", "ece"} <= set(row["sites"]["site-a"]["metrics"])
        assert any(name.startswith("accuracy[sex=") for name in row["sites"]["site-a"]["metrics"])
        assert row["worst_site"]["auroc"]["site"] in ("site-a", "site-b")
        assert set(row["pooled"]["ci"]) == {"accuracy", "auroc", "loss", "ece"}
    assert "<svg" in evaluation["html"] and "acme" in evaluation["html"] and "globex" in evaluation["html"]


def test_refusals_carry_reasons(evaluation: dict) -> None:
    assert any(r.startswith("vendor.unknown") for r in evaluation["refused-mallory"])
    assert any(r.startswith("vendor.key") for r in evaluation["refused-acme"])
    assert evaluation["outsider"].code() == grpc.StatusCode.PERMISSION_DENIED
    assert "does not evaluate vendor models" in evaluation["outsider"].details()
    assert evaluation["stranger"]
    assert not evaluation["garbage"].accepted and evaluation["garbage"].reasons[0].startswith("vendor.manifest")
    assert evaluation["twice"].code() == grpc.StatusCode.ALREADY_EXISTS


def test_plaintext_models_never_on_disk(evaluation: dict) -> None:
    needles = []
    for model in evaluation["models"].values():
        needles += [model, model[-32:], model[:48]]
    found = _scan([evaluation["deployment"].directory, evaluation["sim"]], needles)
    assert found == []


def test_audit_log_records_and_verifies(evaluation: dict) -> None:
    deployment = evaluation["deployment"]
    result = verify_log(deployment.directory / "audit-log", deployment.site_policy())
    assert result.valid, [str(p) for p in result.problems][:5]
    kinds = [event.get("message") for event in read_events(deployment.directory / "aggregator.stderr")]
    for kind in ("vendor_submission", "vendor_dispatch", "vendor_evaluation", "vendor_release", "vendor_refused"):
        assert kind in kinds, kind


def test_vendors_demo_prints_the_comparison(tmp_path: Path) -> None:
    import io
    import time

    from attestfl.scenarios.vendors import run_vendors_demo

    out, err = io.StringIO(), io.StringIO()
    started = time.monotonic()
    assert run_vendors_demo(tmp_path / "demo", out=out, err=err) == 0
    assert time.monotonic() - started < 60
    text = out.getvalue()
    assert "Comparative report" in text and "POOLED" in text
    for hospital in ("st-mary", "general", "riverside"):
        assert hospital in text
    assert "vendor acme received only its own row" in text
    assert (tmp_path / "demo" / "vendor-reports" / "network-report.html").exists()


def test_verifier_catches_a_forged_submission_and_a_foreign_release(evaluation: dict) -> None:
    from dataclasses import replace

    from auditor import verify

    deployment = evaluation["deployment"]
    log = verify_log(deployment.directory / "audit-log", deployment.site_policy())
    (start,) = [e for e in log.entries if e.kind == "aggregator_start"]
    submissions = [e for e in log.entries if e.kind == "vendor_submission"]
    assert len(submissions) == 2
    state = verify._RunState(run_key=start.fields["ed25519"])
    result = verify.Verification(deployment.directory)
    result.configs.extend(e for e in log.entries if e.kind == "config")
    for submission in submissions:
        verify._on_vendor_submission(result, submission, state, verify._Keys())
    assert result.problems == []
    forged = replace(submissions[0], fields={**submissions[0].fields, "signature": bytes(64)})
    verify._on_vendor_submission(result, forged, state, verify._Keys())
    assert [p.check for p in result.problems] == ["vendor_submission.signature"]
    vendor = submissions[0].fields["vendor"]
    foreign = {"to": "vendor", "vendor": vendor, "jobs": [submissions[1].fields["job"]]}
    release = replace(submissions[0], kind="vendor_release", fields=foreign)
    verify._on_vendor_release(result, release, state, verify._Keys())
    assert result.problems[-1].check == "vendor_release.vendor"


def test_vendor_commands(tmp_path: Path) -> None:
    import subprocess
    import sys

    from attestfl.demo import _write_aggregator_policy

    def attestfl(*args: str) -> subprocess.CompletedProcess:
        return subprocess.run(
            [sys.executable, "-m", "attestfl.cli", *args], capture_output=True, text=True, timeout=120, cwd=tmp_path
        )

    keygen = attestfl("vendor", "keygen", "--out", "acme.pem")
    assert keygen.returncode == 0, keygen.stderr
    public = keygen.stdout.strip()
    assert attestfl("vendor", "keygen", "--out", "acme.pem").returncode == 2  # never overwritten
    task = (
        'rounds = 1\n[task.vendors]\nsites = ["site-a"]\nmin_examples = 5\nbootstrap = 20\n'
        f'[task.vendors.keys]\nacme = "{public}"\n'
    )
    deployment = Deployment(tmp_path / "deployment", tmp_path / "sim", sites={"site-a": ""}, task=task)
    deployment.directory.mkdir()
    _write_aggregator_policy(deployment)
    (tmp_path / "model.safetensors").write_bytes(_model(1, 2.0))
    for aggregator in run_aggregator(deployment):
        common = [
            "--aggregator",
            aggregator.target,
            "--policy",
            str(deployment.directory / "aggregator-policy.toml"),
            "--key",
            "acme.pem",
            "--vendor",
            "acme",
        ]
        submit = attestfl(
            "vendor", "submit", *common, "--model", "model.safetensors", "--name", "m1", "--entry-point", ENTRY
        )
        assert submit.returncode == 0, submit.stderr
        job = submit.stdout.strip()
        pending = attestfl("vendor", "report", *common, "--job", job)
        assert pending.returncode == 1 and "not all reported" in pending.stderr
        with deployment.client(aggregator.target, site_id="site-a") as client:
            client.join()
            run_vendor_jobs(client, _data(3, 40))
        report = attestfl("vendor", "report", *common, "--job", job, "--wait", "30")
        assert report.returncode == 0, report.stderr
        assert json.loads(report.stdout)["job"] == job
        refused = attestfl(
            "vendor",
            "submit",
            *common[:-1],
            "mallory",
            "--model",
            "model.safetensors",
            "--name",
            "m1",
            "--entry-point",
            ENTRY,
        )
        assert refused.returncode == 1 and "vendor.unknown" in refused.stderr


def _submission(keys: Any, vendor_key: Ed25519PrivateKey, model: bytes, claimed: bytes) -> Any:
    import hashlib

    from protocol.vendor import VendorManifest, entry_point_digest, seal_key, submission_message
    from protocol.wire import federation_pb2 as pb

    manifest = VendorManifest(
        "acme", "m", hashlib.sha256(claimed).digest(), len(claimed), ENTRY, entry_point_digest(ENTRY)
    ).to_bytes()
    content_key = new_content_key()
    artefact = encrypt_artefact(model, content_key)
    sealed = seal_key(content_key, keys.public.x25519)
    message = submission_message(
        manifest,
        aggregator_x25519=keys.public.x25519,
        aggregator_ed25519=keys.public.ed25519,
        sealed_key=sealed,
        header=artefact.header,
    )
    return pb.VendorSubmission(
        manifest=manifest,
        artefact=pb.VendorArtefact(header=artefact.header, chunks=list(artefact.chunks), sealed_key=sealed),
        vendor_public=public_key(vendor_key),
        signature=vendor_key.sign(message),
    )


def test_enclave_refuses_a_model_that_is_not_the_signed_one(tmp_path: Path) -> None:
    from aggregator.evaluation_jobs import EvaluationJobs
    from enclave.keys import EnclaveKeys
    from protocol.vendor import VendorPolicy

    keys, vendor_key = EnclaveKeys(), Ed25519PrivateKey.generate()
    policy = VendorPolicy(keys={"acme": public_key(vendor_key)}, sites=("site-a",))
    logged: list = []
    jobs = EvaluationJobs(policy, keys, lambda kind, **fields: logged.append(kind), tmp_path)
    refusals: list = []

    def refuse(**fields: object) -> None:
        refusals.append(fields)

    swapped = jobs.submit(_submission(keys, vendor_key, _model(1, 1.0), claimed=_model(2, 1.0)), refuse)
    assert not swapped.accepted and [r.split(":")[0] for r in swapped.reasons] == ["vendor.digest"]
    assert refusals[0]["reasons"] == list(swapped.reasons) and logged == []
    accepted = jobs.submit(_submission(keys, vendor_key, _model(1, 1.0), claimed=_model(1, 1.0)), refuse)
    assert accepted.accepted and logged == ["vendor_submission"]
    again = jobs.submit(_submission(keys, vendor_key, _model(1, 1.0), claimed=_model(1, 1.0)), refuse)
    assert [r.split(":")[0] for r in again.reasons] == ["vendor.duplicate"]
    other_key = Ed25519PrivateKey.generate()
    forged = jobs.submit(_submission(keys, other_key, _model(4, 1.0), claimed=_model(4, 1.0)), refuse)
    assert [r.split(":")[0] for r in forged.reasons] == ["vendor.key"]


def test_a_site_refuses_code_other_than_the_pinned_entry_point() -> None:
    import hashlib

    from fedsite.vendor_eval import load_entry_point
    from protocol.vendor import VendorManifest

    manifest = VendorManifest("acme", "m", hashlib.sha256(b"x").digest(), 1, ENTRY, bytes(32))
    with pytest.raises(VendorError, match="not the code the vendor pinned"):
        load_entry_point(manifest)
    missing = VendorManifest("acme", "m", bytes(32), 1, "no_such_module:build", bytes(32))
    with pytest.raises(VendorError, match="not installed"):
        load_entry_point(missing)


class _NumpyTrainer:
    """A trainer the SDK drives (get/set/train/evaluate) without torch: one step towards zero."""

    def __init__(self) -> None:
        self.model: dict = {}
        self.evaluate = None

    def get(self) -> dict:
        return {name: array * 0.5 for name, array in self.model.items()}

    def set(self, tensors: dict) -> None:
        self.model = {name: np.array(array) for name, array in tensors.items()}

    def train(self, model: dict) -> int:
        return 10


def test_site_run_evaluates_waiting_vendor_jobs(tmp_path: Path) -> None:
    from fedsite.sdk import run_site

    key = Ed25519PrivateKey.generate()
    task = (
        'rounds = 1\nmin_sites = 1\n[task.vendors]\nsites = ["site-a"]\nmin_examples = 5\nbootstrap = 10\n'
        f'[task.vendors.keys]\nacme = "{public_key(key).hex()}"\n'
    )
    deployment = Deployment(tmp_path / "deployment", tmp_path / "sim", sites={"site-a": ""}, task=task)
    deployment.directory.mkdir()
    for aggregator in run_aggregator(deployment):
        with VendorClient(aggregator.target, vendor="acme", signing_key=key, policy=deployment.site_policy()) as vendor:
            job = vendor.submit(_model(1, 2.0), name="m1", entry_point=ENTRY)
            with deployment.client(aggregator.target, site_id="site-a") as client:
                summary = run_site(client, _NumpyTrainer(), progress=None, vendor_data=_data(5, 30))
            assert summary.rounds_trained == [1]
            report = vendor.wait_report(job, timeout=30)
    assert report["pooled"]["examples"] == 30
