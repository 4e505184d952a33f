"""A strategy and an admission check added from outside the package, through their entry points.

The worked examples of docs/extending.md are written, as they stand there, into a tiny
distribution (modules plus a ``*.dist-info`` with ``entry_points.txt``) in a temporary directory
on ``PYTHONPATH``; the real ``attestfl serve`` (attestfl.loopback.Deployment) finds them with no
edit to attestfl. The check refuses the site it should with its own reason id, the rounds apply
the strategy's aggregate, and the auditor's re-run of the log (whose policy carries the check's
parameters) agrees. The unit tests below pin the parts: the [task.strategy] table, the wrappers,
the check registry, the one codec of the admission policy, the log format."""

from __future__ import annotations

import hashlib
import json
import logging
import os
import re
import subprocess
import sys
import time
import tomllib
from collections.abc import Iterator
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import msgspec
import numpy as np
import pytest
from cryptography import x509
from cryptography.hazmat.primitives import hashes
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.hazmat.primitives.serialization import Encoding

from aggregator.audit.synthetic import SyntheticFederation
from aggregator.config import AggregatorConfig
from aggregator.rounds import DpConfig, RoundDriver, TaskConfig
from aggregator.strategies import (
    CentralDp,
    Clipped,
    FedAvg,
    Krum,
    Privacy,
    StackedAggregation,
    Strategy,
    StrategyError,
    TrimmedMean,
    register_strategy,
    strategy_class,
    strategy_names,
    unregister_strategy,
)
from attestation.binding import BoundKeys
from attestation.errors import PolicyError
from attestation.findings import Reason
from auditor.verify import verify_log
from enclave.simulated.attester import SimulatedSnpAttester
from federation import MODEL, Deployment, run_aggregator
from fedsite.client import AdmissionRefused
from protocol.admission import (
    BUILTIN_CHECKS,
    AdmissionCheck,
    AdmissionInputs,
    AdmissionPolicy,
    AdmissionRequest,
    AppAttestRule,
    IdentityProof,
    OrganisationCa,
    SiteRule,
    admission_checks,
    appraise,
    decode_plain,
    encode_plain,
    validate_check,
)
from protocol.auditlog.records import (
    LOG_FORMAT,
    PolicyRecordError,
    admission_policy_from_record,
    admission_policy_record,
)
from protocol.tensors import ModelSpec, encode_tensors

ROOT = Path(__file__).resolve().parent.parent
DOC = ROOT / "docs" / "extending.md"


# --- the distribution, from the doc's code blocks ----------------------------------------------


def doc_blocks() -> list[tuple[str, str, str]]:
    """(language, file name, text) of every fenced block of docs/extending.md that names a file."""
    return re.findall(r"^```(\w+) (\S+)\n(.*?)^```", DOC.read_text(), flags=re.MULTILINE | re.DOTALL)


def doc_block(name: str, section: str) -> str:
    """The block for file ``name`` in the doc's section ``section``."""
    text = DOC.read_text()
    start = text.index(f"## {section}\n")
    end = text.find("\n## ", start + 1)
    found = [
        body
        for _, file, body in re.findall(r"^```(\w+) (\S+)\n(.*?)^```", text[start:end], flags=re.MULTILINE | re.DOTALL)
        if file == name
    ]
    assert len(found) == 1, (name, section)
    return found[0]


def write_distribution(directory: Path) -> Path:
    """The doc's modules and entry points as an installed distribution ``example-plugins`` in
    ``directory`` (what pip would leave in site-packages)."""
    directory.mkdir(parents=True, exist_ok=True)
    entry_points = []
    for language, name, body in doc_blocks():
        if language == "python":
            (directory / name).write_text(body)
        elif name == "entry_points.txt":
            entry_points.append(body)
    info = directory / "example_plugins-1.0.dist-info"
    info.mkdir(exist_ok=True)
    (info / "METADATA").write_text("Metadata-Version: 2.1\nName: example-plugins\nVersion: 1.0\n")
    (info / "entry_points.txt").write_text("\n".join(entry_points))
    return directory


@pytest.fixture
def plugins(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Iterator[Path]:
    """The distribution importable here (sys.path) and in the processes tests start (PYTHONPATH)."""
    directory = write_distribution(tmp_path / "plugins")
    monkeypatch.syspath_prepend(str(directory))
    monkeypatch.setenv("PYTHONPATH", os.pathsep.join(filter(None, [str(directory), os.environ.get("PYTHONPATH")])))
    yield directory
    for module in ("example_strategies", "example_checks"):
        sys.modules.pop(module, None)


def test_the_doc_has_both_worked_examples() -> None:
    names = [(language, name) for language, name, _ in doc_blocks()]
    assert names.count(("python", "example_strategies.py")) == 1 and names.count(("python", "example_checks.py")) == 1
    assert names.count(("ini", "entry_points.txt")) == 2 and names.count(("toml", "aggregator.toml")) == 2
    assert "\n## Add a strategy\n" in DOC.read_text() and "\n## Add an admission check\n" in DOC.read_text()
    assert "\n## Add a platform\n" in DOC.read_text()


# --- the federation: attestfl serve with the installed strategy and check ------------------------


def _update(value: float) -> dict[str, np.ndarray]:
    return {name: np.full(array.shape, value, np.float32) for name, array in MODEL.items()}


def _wait_for_round(client: Any, round_number: int, timeout: float = 30) -> None:
    deadline = time.time() + timeout
    while client.task().round == round_number and not client.task().finished and time.time() < deadline:
        time.sleep(0.05)


def test_a_federation_uses_the_installed_strategy_and_check(plugins: Path, tmp_path: Path) -> None:
    closed_hour = (datetime.now(UTC).hour + 12) % 24  # hours away: the refusal cannot turn into an admission mid-test
    every_hour = ", ".join(str(h) for h in range(24))
    deployment = Deployment(
        tmp_path / "deployment",
        tmp_path / "sim",
        sites={
            "site-a": "",  # no table: the check passes
            # (dotted keys: the loopback deployment appends the rule's other keys after these lines)
            "site-b": f'checks."example.hours".hours = [{closed_hour}]',
            "site-c": f'checks."example.hours".hours = [{every_hour}]',
        },
        task='rounds = 1\nmin_sites = 2\nround_deadline = "120s"\n' + doc_block("aggregator.toml", "Add a strategy"),
    )
    deployment.directory.mkdir()
    for aggregator in run_aggregator(deployment):

        def client(site: str, aggregator: Any = aggregator) -> Any:
            return deployment.client(
                aggregator.target,
                site_id=site,
                policy=deployment.site_policy(),
                attester=SimulatedSnpAttester(deployment.sim_dir),
            )

        with client("site-b") as refused, pytest.raises(AdmissionRefused) as caught:
            refused.join()
        assert [r.split(":")[0] for r in caught.value.reasons] == ["example.hours"], caught.value.reasons
        assert f"may join at {closed_hour:02d}h UTC" in caught.value.reasons[0]
        a, c = client("site-a"), client("site-c")
        for site in (a, c):
            site.join()
        task = a.task()
        spec = ModelSpec.from_json(task.model_spec)
        before = a.download_model(1, spec)
        a.upload_update(1, _update(0.25), weight=10)
        c.upload_update(1, _update(0.5), weight=1)
        _wait_for_round(a, 1)
        assert a.task().finished
        after = a.download_model(2, spec)
        for name in MODEL:
            # scaled_max with scale = 2.0: 2 * max(0.25, 0.5) per coordinate, whatever the weights
            np.testing.assert_allclose(after[name], before[name] + 1.0, rtol=0, atol=1e-6)
        for site in (a, c):
            site.close()
        rounds = [e for e in aggregator.events() if e["message"] == "round"]
        assert rounds and rounds[-1]["strategy"] == {"name": "scaled_max", "scale": 2.0}

    result = verify_log(deployment.directory / "audit-log", deployment.site_policy())
    assert result.valid, [str(p) for p in result.problems]
    config = next(e for e in result.entries if e.kind == "config")
    assert config.fields["log_format"] == LOG_FORMAT
    assert config.fields["admission"]["extension_checks"] == ["example.hours"]
    assert config.fields["admission"]["sites"]["site-c"]["checks"] == {"example.hours": {"hours": list(range(24))}}
    refusal = next(a for a in result.admissions if a.site == "site-b")
    assert not refusal.admitted and refusal.confirmed and refusal.reasons[0].startswith("example.hours: ")
    assert sum(a.admitted and a.confirmed for a in result.admissions) == 2
    assert result.rounds[0].strategy == {"name": "scaled_max", "scale": 2.0}

    # An auditor without the distribution cannot re-run those admissions, and says why.
    env = dict(
        os.environ,
        PYTHONPATH=os.pathsep.join(p for p in os.environ["PYTHONPATH"].split(os.pathsep) if p != str(plugins)),
    )
    (tmp_path / "auditor-policy.toml").write_text((deployment.directory / "site-policy.toml").read_text())
    run = subprocess.run(
        [
            sys.executable,
            "-m",
            "attestfl.cli",
            "audit",
            "verify",
            str(deployment.directory / "audit-log"),
            "--policy",
            str(tmp_path / "auditor-policy.toml"),
            "--json",
        ],
        check=False,
        capture_output=True,
        text=True,
        cwd=ROOT,
        env=env,
        timeout=120,
    )
    report = json.loads(run.stdout)
    assert run.returncode != 0 and not report["valid"]
    messages = [p["message"] for p in report["problems"] if p["check"] == "config.admission"]
    assert messages and "admission check 'example.hours' is not installed here" in messages[0]


# --- [task.strategy] ----------------------------------------------------------------------------


def _config(tmp_path: Path, task: str) -> Path:
    (tmp_path / "model.safetensors").write_bytes(encode_tensors({"w": np.zeros(4, np.float32)}))
    path = tmp_path / "aggregator.toml"
    path.write_text(
        '[aggregator]\nlisten = "127.0.0.1:0"\ntee = "simulated-snp"\nsimulated_dir = "sim"\n\n'
        f'[task]\ninitial_model = "model.safetensors"\n{task}\n'
    )
    return path


def _refused(path: Path) -> str:
    with pytest.raises(ValueError) as caught:
        AggregatorConfig.load(path)
    message = str(caught.value)
    assert "\n" not in message and message.startswith(f"{path}: "), message
    return message.removeprefix(f"{path}: ")


def test_the_strategy_table_is_typed_per_strategy(tmp_path: Path) -> None:
    task = AggregatorConfig.load(_config(tmp_path, 'min_sites = 5\n[task.strategy]\nname = "krum"\nf = 1\nm = 2')).task
    assert task.strategy == Krum(1, 2)
    assert AggregatorConfig.load(
        _config(tmp_path, '[task.strategy]\nname = "trimmed_mean"\nbeta = 0')
    ).task.strategy == TrimmedMean(0.0)
    assert AggregatorConfig.load(_config(tmp_path, 'strategy = "median"')).task.strategy.name == "median"
    cases = {
        '[task.strategy]\nname = "krum"\nf = "1"': '[task.strategy] f: expected an integer from 0 to 10000, got "1"',
        '[task.strategy]\nname = "krum"\nbeta = 0.1': (
            '[task.strategy]: unknown key(s) beta for strategy "krum"; allowed: name, f, m'
        ),
        '[task.strategy]\nname = "mean"': (
            '[task.strategy] name: expected one of "fedavg", "krum", "median", "trimmed_mean", got "mean"'
        ),
        "[task.strategy]\nbeta = 0.1": (
            '[task.strategy] name: required: one of "fedavg", "krum", "median", "trimmed_mean"'
        ),
        '[task.strategy]\nname = "trimmed_mean"\nbeta = 0.5': (
            "[task.strategy] beta: expected a finite number in [0, 0.5), got 0.5"
        ),
        'krum_f = 2\n[task.strategy]\nname = "krum"': (
            '[task] krum_f: with a [task.strategy] table, write the parameter there (f = ..., for name = "krum")'
        ),
        'min_sites = 4\n[task.strategy]\nname = "krum"': (
            "[task] min_sites: strategy krum (f = 1, m = 1) needs at least 5 sites per round; min_sites is 4"
        ),
        "strategy = 5": "[task] strategy: expected a string or a table, got 5",
    }
    for text, message in cases.items():
        assert _refused(_config(tmp_path, text)) == message, text


def test_the_flat_strategy_keys_still_work_with_a_warning(tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    with caplog.at_level(logging.WARNING, logger="attestfl.aggregator"):
        task = AggregatorConfig.load(_config(tmp_path, 'strategy = "krum"\nkrum_m = 2\nmin_sites = 5')).task
    assert task.strategy == Krum(1, 2)
    warning = next(r for r in caplog.records if "deprecated [task] keys" in r.getMessage())
    assert warning.fields["instead"] == '[task.strategy]\nname = "krum"\nm = 2'  # type: ignore[attr-defined]


def test_an_installed_strategy_is_found_by_its_entry_point(plugins: Path, tmp_path: Path) -> None:
    assert "scaled_max" in strategy_names()
    task = AggregatorConfig.load(
        _config(tmp_path, "min_sites = 2\n" + doc_block("aggregator.toml", "Add a strategy"))
    ).task
    assert task.strategy.name == "scaled_max" and task.strategy.describe() == {"name": "scaled_max", "scale": 2.0}
    assert (
        _refused(_config(tmp_path, 'min_sites = 2\n[task.strategy]\nname = "scaled_max"\nscale = "2"'))
        == '[task.strategy] scale: expected a finite number in (0, 10], got "2"'
    )
    assert _refused(_config(tmp_path, '[task.strategy]\nname = "scaled_max"')).startswith(
        "[task] min_sites: strategy scaled_max (scale = 1.0) needs at least 2 sites per round"
    )


def test_a_broken_strategy_entry_point_is_one_line(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    info = tmp_path / "broken-1.0.dist-info"
    info.mkdir()
    (info / "METADATA").write_text("Metadata-Version: 2.1\nName: broken\nVersion: 1.0\n")
    (info / "entry_points.txt").write_text(
        "[attestfl.strategies]\nbroken = no_such_module:Nothing\nwrong = json:dumps\n"
    )
    monkeypatch.syspath_prepend(str(tmp_path))
    assert _refused(_config(tmp_path, '[task.strategy]\nname = "broken"')).startswith(
        "[task.strategy] name: entry point broken = no_such_module:Nothing (group attestfl.strategies) "
        "cannot be loaded: ModuleNotFoundError"
    )
    assert "is not a subclass of aggregator.strategies.Strategy" in _refused(
        _config(tmp_path, '[task.strategy]\nname = "wrong"')
    )


def test_register_strategy_in_code() -> None:
    class Last(Strategy):
        name = "last_update_test"

        def begin_round(self, size: int) -> StackedAggregation:
            return StackedAggregation(size, lambda stack, _w: stack[-1])

    register_strategy(Last)
    try:
        assert strategy_class("last_update_test") is Last and "last_update_test" in strategy_names()
        with pytest.raises(StrategyError, match="taken"):
            register_strategy(type("Other", (Last,), {}))
        with pytest.raises(StrategyError, match="not 1-64 lowercase"):
            register_strategy(type("Bad", (Last,), {"name": "Bad Name"}))
    finally:
        unregister_strategy("last_update_test")  # other tests list the strategies
    assert "last_update_test" not in strategy_names()


# --- the wrappers ---------------------------------------------------------------------------------


def test_clipping_and_dp_wrap_any_strategy() -> None:
    wrapped = CentralDp(Clipped(TrimmedMean(0.1), 5.0), 1.0, 0.5, 1e-6)
    assert wrapped.name == "trimmed_mean" and wrapped.base == TrimmedMean(0.1) and wrapped.minimum_sites() == 1
    assert wrapped.round_fields() == {
        "strategy": {"name": "trimmed_mean", "beta": 0.1},
        "clip_norm": 5.0,
        "dp": {"clip_norm": 1.0, "noise_multiplier": 0.5, "delta": 1e-6},
    }
    aggregation = wrapped.begin_round(4)
    facts = aggregation.add(np.full(4, 3.0, np.float32), 100.0, 0)  # norm 6: clipped to 1 by DP (outermost), then to 5
    assert facts == {"norm_before_clip": pytest.approx(6.0)}
    aggregation.add(np.full(4, 0.1, np.float32), 1.0, 1)
    closed = aggregation.close(Privacy(3))
    assert closed.privacy.rounds == 4 and closed.privacy.epsilon == pytest.approx(wrapped.epsilon(4))
    plain = Clipped(FedAvg(), 1.0).begin_round(4)
    plain.add(np.full(4, 3.0, np.float32), 3.0, 0)
    plain.add(np.zeros(4, np.float32), 1.0, 1)
    closed = plain.close(Privacy(2, 0.5))
    assert closed.privacy == Privacy(2, 0.5)  # no DP: the budget does not move
    np.testing.assert_allclose(closed.delta, np.full(4, 0.5 * 3 / 4), rtol=1e-6)  # clipped to norm 1, weight 3 of 4
    with pytest.raises(StrategyError):
        Clipped(FedAvg(), float("nan"))


def test_the_round_driver_calls_only_the_wrapped_strategy() -> None:
    config = TaskConfig(
        initial_model={"w": np.zeros(4, np.float32)},
        rounds=2,
        clip_norm=2.0,
        dp=DpConfig(clip_norm=1.0, noise_multiplier=1e-6, delta=1e-5),
    )
    driver = RoundDriver(config)
    assert isinstance(driver.strategy, CentralDp) and isinstance(driver.strategy.inner, Clipped)
    assert driver.strategy.base is config.strategy


# --- admission checks -----------------------------------------------------------------------------


class _Raises(AdmissionCheck):
    id = "test.raises"

    def check(self, inputs: AdmissionInputs, parameters: Any) -> list[Reason]:
        raise KeyError("boom")


class _EarlyEvidence(AdmissionCheck):
    id = "test.early"
    stage = "request"

    def check(self, inputs: AdmissionInputs, parameters: Any) -> list[Reason]:
        return [Reason(self.id, str(inputs.evidence.platform))]  # refused: the request stage has no evidence


def _request(site_id: str, **changes: Any) -> AdmissionRequest:
    fields: dict[str, Any] = {
        "site_id": site_id,
        "challenge": os.urandom(32),
        "x25519": bytes(range(1, 33)),
        "ed25519": bytes(32),
        "evidence_format": "bundle",
        "evidence": b"not a bundle",
        "identity": IdentityProof(),
        "aggregator": BoundKeys(bytes(32), bytes(32)),
        "at": datetime.now(UTC),
    }
    return AdmissionRequest(**{**fields, **changes})


def test_installed_checks_are_validated() -> None:
    for value, message in [
        (object(), "is not an AdmissionCheck"),
        (type("C", (_Raises,), {"id": "Admission.X"})(), "is not dotted lowercase"),
        (type("C", (_Raises,), {"id": "admission.mine"})(), "the 'admission.' ids are the built-in checks'"),
        (type("C", (_Raises,), {"stage": "identity"})(), "is not 'request' or 'evidence'"),
        (
            type("C", (_Raises,), {"stage": "request", "inputs": ("evidence",)})(),
            "a request-stage check cannot read evidence",
        ),
        (type("C", (_Raises,), {"Parameters": dict})(), "Parameters is not a msgspec Struct"),
    ]:
        with pytest.raises(PolicyError, match=re.escape(message)):
            validate_check(value, "entry point x")
    assert validate_check(_Raises, "class").id == "test.raises"
    with pytest.raises(PolicyError, match=r"'nope\.missing' is not installed here"):
        admission_checks(["nope.missing"])


def test_a_failing_installed_check_refuses_with_its_id_and_the_request_stage_never_sees_evidence() -> None:
    rule = SiteRule(frozenset({"sev-snp"}), identity_keys=frozenset({bytes(32)}))
    early = AdmissionPolicy({"a": rule}, checks=(*BUILTIN_CHECKS, _EarlyEvidence()))
    appraisal = appraise(early, _request("a"))
    assert [r.check for r in appraisal.reasons] == ["test.early"]
    assert (
        "RuntimeError" in appraisal.reasons[0].message and "only later stages may read" in appraisal.reasons[0].message
    )
    raising = AdmissionPolicy({"a": rule}, checks=(*BUILTIN_CHECKS, type("Early", (_Raises,), {"stage": "request"})()))
    assert appraise(raising, _request("a")).reasons == (Reason("test.raises", "the check failed: KeyError: 'boom'"),)


def test_an_unknown_site_is_told_what_a_known_one_would_be() -> None:
    rule = SiteRule(frozenset({"sev-snp"}), identity_keys=frozenset({os.urandom(32)}))
    policy = AdmissionPolicy({"known": rule})
    challenge = Reason("admission.challenge", "the challenge was replayed")
    for site in ("known", "stranger"):
        bad_challenge = appraise(policy, _request(site, challenge_reason=challenge))
        assert bad_challenge.reply == (str(challenge),), site  # the same answer: no roster enumeration
        no_identity = appraise(policy, _request(site))
        assert [r.split(":")[0] for r in no_identity.reply] == ["admission.identity.missing"], site
    assert [r.check for r in appraise(policy, _request("stranger", challenge_reason=challenge)).reasons] == [
        "admission.challenge",
        "admission.site_id",
    ]  # the log says the truth


def test_check_parameters_are_checked_where_they_are_written(plugins: Path, tmp_path: Path) -> None:
    def load(extra: str) -> AdmissionPolicy:
        path = tmp_path / "aggregator.toml"
        path.write_text(
            f'[admission.sites.hospital-b]\nplatforms = ["sev-snp"]\nidentity_keys = ["{"11" * 32}"]\n{extra}\n'
        )
        return AdmissionPolicy.load(path)

    doc = doc_block("aggregator.toml", "Add an admission check")
    tomllib.loads(doc)
    policy = load(doc)
    hours = next(c for c in policy.checks if c.id == "example.hours")
    assert policy.parameters("hospital-b", hours) == hours.Parameters(hours=list(range(8, 17)))  # type: ignore[misc]
    table = '[admission.sites.hospital-b.checks."example.hours"]'
    for extra, message in [
        (f'{table}\nhours = ["9"]', f'{table} hours: expected a list, each an integer from 0 to 23, got ["9"]'),
        (f"{table}\nhours = [9]\nminutes = 5", f"{table}: unknown key(s) minutes; allowed: hours"),
        (
            '[admission.sites.hospital-b.checks."example.typo"]\nhours = [1]',
            "no admission check in force takes parameters under this id; those that do: example.hours",
        ),
        ("checks = 5", "[admission.sites.hospital-b] checks: expected a table of check parameters"),
    ]:
        with pytest.raises(PolicyError) as caught:
            load(extra)
        assert message in str(caught.value), str(caught.value)


# --- the one codec of the admission policy --------------------------------------------------------


def _ca() -> OrganisationCa:
    key = ec.generate_private_key(ec.SECP256R1())
    name = x509.Name([x509.NameAttribute(x509.NameOID.COMMON_NAME, "org CA")])
    now = datetime.now(UTC)
    cert = (
        x509.CertificateBuilder()
        .subject_name(name)
        .issuer_name(name)
        .public_key(key.public_key())
        .serial_number(1)
        .not_valid_before(now)
        .not_valid_after(now + timedelta(days=1))
        .add_extension(x509.BasicConstraints(ca=True, path_length=None), critical=True)
        .sign(key, hashes.SHA256())
    )
    return OrganisationCa.from_bytes(cert.public_bytes(Encoding.PEM), "test")


def test_a_rule_round_trips_through_its_plain_form() -> None:
    rule = SiteRule(
        frozenset({"sev-snp", "tdx", "app-attest"}),
        identity_keys=frozenset({b"\x01" * 32}),
        organisation_ca=_ca(),
        measurements=frozenset({b"\x02" * 48}),
        chip_ids=frozenset({b"\x03" * 64}),
        host_data=frozenset({b"\x04" * 32}),
        mr_config_ids=frozenset({b"\x05" * 48}),
        ed25519_keys=frozenset({b"\x06" * 32}),
        max_weight=12,
        app_attest=AppAttestRule("TEAM.org.example", b"-----PEM-----", False),
        checks={"x.y": {"n": [1, 2]}},
    )
    plain = encode_plain(rule)
    assert plain["identity_keys"] == ["01" * 32] and plain["organisation_ca"] == rule.organisation_ca.der  # type: ignore[union-attr]
    assert plain["max_weight"] == 12.0 and plain["platforms"] == ["app-attest", "sev-snp", "tdx"]
    assert decode_plain(plain, SiteRule) == rule and encode_plain(decode_plain(plain, SiteRule)) == plain
    for bad in (
        {**plain, "identity_keys": ["01" * 31]},
        {**plain, "measurements": ["XY" * 48]},
        {**plain, "new_field": 1},
        {**plain, "platforms": ["sgx"]},
        {**plain, "max_weight": float("inf")},
        {**plain, "organisation_ca": b"junk"},
    ):
        with pytest.raises(msgspec.ValidationError):
            decode_plain(bad, SiteRule)


def _format_1_record(policy: AdmissionPolicy) -> dict[str, Any]:
    """The admission map exactly as the hand-written encoder of log format 1 wrote it."""
    sites = {}
    for site_id, rule in sorted(policy.sites.items()):
        app = (
            None
            if rule.app_attest is None
            else {
                "app_id": rule.app_attest.app_id,
                "root_pem": rule.app_attest.root_pem,
                "production": rule.app_attest.production,
            }
        )
        sites[site_id] = {
            "platforms": sorted(rule.platforms),
            "identity_keys": sorted(k.hex() for k in rule.identity_keys),
            "organisation_ca": None if rule.organisation_ca is None else rule.organisation_ca.der,
            **{
                name: sorted(v.hex() for v in getattr(rule, name))
                for name in ("measurements", "chip_ids", "host_data", "mr_config_ids", "ed25519_keys")
            },
            "max_weight": rule.max_weight,
            "app_attest": app,
        }
    return {
        "policy_id": policy.policy_id,
        "attestation_policy": policy.policy_text,
        "challenge_ttl_s": policy.challenge_ttl.total_seconds(),
        "credential_ttl_s": policy.credential_ttl.total_seconds(),
        "sites": sites,
    }


def test_the_logged_policy_round_trips_and_format_1_still_reads() -> None:
    text = b'trusted_simulated_roots = ["' + b"ab" * 32 + b'"]\n'
    policy = AdmissionPolicy(
        {
            "a": SiteRule(
                frozenset({"sev-snp"}), identity_keys=frozenset({b"\x07" * 32}), organisation_ca=_ca(), max_weight=5
            ),
            "m": SiteRule(
                frozenset({"app-attest"}),
                identity_keys=frozenset({b"\x08" * 32}),
                app_attest=AppAttestRule("T.org.example", None, True),
            ),
        },
        policy_id="sha256:" + hashlib.sha256(text).hexdigest(),
        policy_text=text,
        challenge_ttl=timedelta(seconds=30),
    )
    again = admission_policy_from_record(admission_policy_record(policy))
    assert again.sites == policy.sites and again.checks == BUILTIN_CHECKS
    assert (again.policy_id, again.policy_text, again.challenge_ttl, again.credential_ttl) == (
        policy.policy_id,
        text,
        policy.challenge_ttl,
        policy.credential_ttl,
    )
    old = admission_policy_from_record(_format_1_record(policy))
    assert old.sites == policy.sites and old.checks == BUILTIN_CHECKS
    for broken, message in [
        ({**_format_1_record(policy), "policy_id": "sha256:00"}, "is not the digest"),
        ({**_format_1_record(policy), "extension_checks": ["nope.x"]}, "'nope.x' is not installed here"),
        ({**_format_1_record(policy), "sites": {"a": {"platforms": "sev-snp"}}}, "unusable"),
    ]:
        with pytest.raises(PolicyRecordError, match=re.escape(message)):
            admission_policy_from_record(broken)


def test_the_verifier_refuses_a_log_format_it_does_not_know(tmp_path: Path) -> None:
    fed = SyntheticFederation(tmp_path / "log", tmp_path / "sim", sites=["a"], fsync=False)
    assert fed.admit("a")
    index = fed.log.append("config", {"log_format": 99, "admission": admission_policy_record(fed.admission)})  # type: ignore[union-attr]
    fed.close()
    result = verify_log(tmp_path / "log", fed.auditor_policy())
    assert [(p.index, p.check) for p in result.problems] == [(index, "config.log_format")]
    assert "log format 99, which this verifier does not read (it reads formats 1, 2)" in result.problems[0].message
    configs = [e for e in result.entries if e.kind == "config"]
    assert configs[0].fields["log_format"] == LOG_FORMAT
