"""The verifier checks the model-delivery entries: a released model is the last closed round's, for
the recipients the logged release policy names, and delivered only to admitted sites; the
configuration bundle's digests are those of its listed files and its aggregator.toml the logged one."""

from __future__ import annotations

import hashlib
from pathlib import Path

from aggregator.audit.synthetic import SyntheticFederation
from auditor.verify import verify_log
from enclave.config_bundle import bundle_files

FINAL = hashlib.sha256(b"the final model").hexdigest()
OWNER = "ab" * 32


def _federation(tmp_path: Path) -> SyntheticFederation:
    fed = SyntheticFederation(tmp_path / "log", tmp_path / "sim", sites=["hospital-a", "hospital-b"])
    fed.admit("hospital-a")
    assert fed.log is not None
    bundle = bundle_files({"config": fed.config_raw, "task.initial_model": b"model"})
    fed.log.record("config_bundle", **bundle.describe())
    fed.log.record(
        "model_initial",
        model_sha256=hashlib.sha256(b"model").hexdigest(),
        file_sha256=None,
        bytes=5,
        release={"deliver": "final", "to": ["admitted-sites"], "owner_keys": [OWNER]},
    )
    fed.round(1, ["hospital-a"], model_sha256=FINAL)
    return fed


def _released(fed: SyntheticFederation, digest: str = FINAL, owner: str = OWNER) -> None:
    assert fed.log is not None
    fed.log.record(
        "model_released",
        round=2,
        final=True,
        model_sha256=digest,
        to_sites=True,
        owners=[{"owner_key": owner, "file": "final-model.x.afm", "sealed_sha256": "00" * 32}],
    )


def test_an_honest_delivery_verifies(tmp_path: Path) -> None:
    fed = _federation(tmp_path)
    _released(fed)
    assert fed.log is not None
    fed.log.record("model_delivered", site="hospital-a", round=2, final=True, model_sha256=FINAL)
    fed.close()
    result = verify_log(tmp_path / "log", fed.auditor_policy())
    assert result.valid, [str(p) for p in result.problems]
    assert result.to_json()["models"]["final_sha256"] == FINAL == result.models["released"]["2"]


def test_delivery_lies_are_named(tmp_path: Path) -> None:
    fed = _federation(tmp_path)
    _released(fed, digest=hashlib.sha256(b"another model").hexdigest(), owner="cd" * 32)
    assert fed.log is not None
    fed.log.record("model_delivered", site="hospital-b", round=2, final=True, model_sha256=FINAL)
    fed.close()
    result = verify_log(tmp_path / "log", fed.auditor_policy())
    checks = [p.check for p in result.problems]
    assert checks.count("delivery.digest") == 2  # released != the round's model; delivered != released
    assert "delivery.recipient" in checks and "delivery.site" in checks  # an unnamed owner; an unadmitted site


def test_a_bundle_that_does_not_match_its_files_is_named(tmp_path: Path) -> None:
    fed = SyntheticFederation(tmp_path / "log", tmp_path / "sim", sites=["hospital-a"])
    assert fed.log is not None
    described = bundle_files({"config": b"another aggregator.toml"}).describe()
    fed.log.record("config_bundle", **dict(described, sha256="00" * 32))
    fed.close()
    checks = {p.check for p in verify_log(tmp_path / "log", fed.auditor_policy()).problems}
    assert checks == {"config_bundle.digest", "config_bundle.config"}
