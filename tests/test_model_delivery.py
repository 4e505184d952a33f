"""Model delivery under policy, end to end on loopback with the real `attestfl serve` and three
`attestfl site run` processes training a model that is not the demo's (an MLP with a BatchNorm
made by `attestfl model init`): each site ends with final-model.safetensors whose digest is the
one in the audit log; the model owner opens its sealed copy, a non-recipient cannot; `site verify`
prints the claims (exit 0), refuses an aggregator whose measurement is not pinned (exit 1: here the
measurement of the same configuration with another initial model) and says "unreachable" (exit 3)."""

from __future__ import annotations

import hashlib
import json
import os
import subprocess
import sys
import textwrap
from pathlib import Path

import numpy as np
import pytest

from aggregator.checkpoint import Checkpoint, load_checkpoint, save_checkpoint
from aggregator.delivery import Delivery, ReleaseConfigError, ReleasePolicy, read_release
from aggregator.rounds import TaskConfig, make_driver
from aggregator.service import LogEvents, UpdateRefused
from attestation.platforms.snp import NAME as SNP
from auditor.verify import verify_log
from enclave.sealing import SimulatedSealingKey
from protocol.delivery import DeliveryError, generate_owner_key, load_owner_key, open_owner_model, seal_to_owner
from protocol.tensors import decode_tensors, encode_tensors, load_model
from tests.federation import Deployment

SITES = ("site-a", "site-b", "site-c")
ROOT = Path(__file__).resolve().parent.parent

MLP = textwrap.dedent("""\
    import numpy as np
    import torch
    from torch import nn

    from fedsite.sdk import TorchTrainer


    def build():
        torch.manual_seed(0)
        return nn.Sequential(nn.Linear(4, 8), nn.BatchNorm1d(8), nn.ReLU(), nn.Linear(8, 2))


    def trainer(data, base):
        rng = np.random.default_rng(int(data["seed"]))
        x = torch.tensor(rng.normal(size=(64, 4)), dtype=torch.float32)
        y = (x[:, 0] + x[:, 1] > 0).long()
        model = build()

        def train(model):
            model.train()
            optimiser = torch.optim.SGD(model.parameters(), lr=0.1)
            for _ in range(3):
                optimiser.zero_grad()
                nn.functional.cross_entropy(model(x), y).backward()
                optimiser.step()
            return len(y)

        def evaluate(model):
            model.eval()
            with torch.no_grad():
                accuracy = float((model(x).argmax(1) == y).float().mean())
            return {"accuracy": accuracy}, len(y)

        return TorchTrainer(model, train=train, evaluate=evaluate)
    """)


def _env(*paths: Path) -> dict[str, str]:
    return dict(os.environ, PYTHONPATH=os.pathsep.join([str(ROOT), *map(str, paths)]), PYTHONUNBUFFERED="1")


def _attestfl(*args: str, cwd: Path, env: dict[str, str] | None = None, timeout: float = 120):
    return subprocess.run(
        [sys.executable, "-m", "attestfl.cli", *args],
        capture_output=True,
        text=True,
        cwd=cwd,
        env=env or _env(cwd),
        timeout=timeout,
    )


def _site_toml(directory: Path, site: str, target: str, policy: str, identity: Path, sim_dir: Path) -> Path:
    path = directory / f"{site}.toml"
    path.write_text(
        textwrap.dedent(f"""\
        [site]
        id = "{site}"
        aggregator = "{target}"
        tee = "simulated-snp"
        simulated_dir = "{sim_dir}"
        policy = "{policy}"
        identity = "{identity}"
        state_dir = "{site}-state"

        [data]
        trainer = "mlp:trainer"
        seed = {SITES.index(site) if site in SITES else 9}
        """)
    )
    return path


@pytest.fixture(scope="module")
def delivered(tmp_path_factory: pytest.TempPathFactory) -> dict:
    base = tmp_path_factory.mktemp("delivery")
    (base / "mlp.py").write_text(MLP)
    made = _attestfl("model", "init", "mlp.py:build", "-o", "initial.safetensors", "--json", cwd=base)
    assert made.returncode == 0, made.stderr
    assert any(t["cast"] for t in json.loads(made.stdout)["tensors"])  # BatchNorm's num_batches_tracked
    owner = _attestfl("owner", "keygen", "-o", "owner.key", "--json", cwd=base)
    assert owner.returncode == 0, owner.stderr
    owner_key = json.loads(owner.stdout)["owner_key"]
    model = load_model(base / "initial.safetensors")
    deployment = Deployment(
        base / "aggregator",
        base / "vendor",
        model={name: np.zeros_like(array) for name, array in model.items()},
        sites=dict.fromkeys(SITES, ""),
        task=f'rounds = 2\nmin_sites = 3\nround_deadline = "300s"\n[task.release]\nowner_keys = ["{owner_key}"]',
    )
    deployment.directory.mkdir()
    identities = {site: deployment.sealed_identity(site) for site in SITES}
    deployment.write()
    stale = deployment.measurement()  # the same configuration with another initial model
    deployment.model = model
    deployment.write()
    measurement = deployment.measurement()
    roots = ", ".join(f'"{fp}"' for fp in deployment.roots.values())
    for name, pinned in (("policy.toml", measurement), ("stale-policy.toml", stale)):
        (base / name).write_text(
            f'trusted_simulated_roots = [{roots}]\nplatforms = ["{SNP}"]\n[{SNP}]\nmeasurement = ["{pinned.hex()}"]\n'
        )
    aggregator = deployment.start()
    try:
        configs = {
            site: _site_toml(base, site, aggregator.target, "policy.toml", identities[site], deployment.sim_dir)
            for site in SITES
        }
        verify = _attestfl("site", "verify", "--config", str(configs["site-a"]), cwd=base)
        verify_json = _attestfl("site", "verify", "--config", str(configs["site-a"]), "--json", cwd=base)
        stale_config = _site_toml(
            base, "site-stale", aggregator.target, "stale-policy.toml", identities["site-a"], deployment.sim_dir
        )
        refused = _attestfl("site", "verify", "--config", str(stale_config), "--json", cwd=base)
        runs = [
            subprocess.Popen(
                [sys.executable, "-m", "attestfl.cli", "site", "run", "--config", str(config), "--json"],
                stdout=subprocess.PIPE,
                stderr=subprocess.PIPE,
                text=True,
                cwd=base,
                env=_env(base),
            )
            for config in configs.values()
        ]
        outputs = [run.communicate(timeout=600) for run in runs]
        codes = [run.returncode for run in runs]
    finally:
        aggregator.stop()
    # The aggregator is gone: joining says so (exit 3), it does not call it untrusted (exit 1).
    gone = _attestfl("site", "join", "--config", str(configs["site-a"]), "--wait", "1", cwd=base)
    return {
        "base": base,
        "deployment": deployment,
        "measurement": measurement,
        "stale": stale,
        "verify": verify,
        "verify_json": verify_json,
        "refused": refused,
        "outputs": outputs,
        "codes": codes,
        "owner_key": owner_key,
        "gone": gone,
    }


def test_each_site_keeps_the_final_model_the_audit_log_names(delivered: dict) -> None:
    assert delivered["codes"] == [0, 0, 0], [err[-2000:] for _out, err in delivered["outputs"]]
    base, deployment = delivered["base"], delivered["deployment"]
    result = verify_log(deployment.directory / "audit-log", deployment.site_policy())
    assert result.valid, [str(p) for p in result.problems]
    by_kind: dict[str, list] = {}
    for entry in result.entries:
        by_kind.setdefault(entry.kind, []).append(entry.fields)
    final = result.rounds[-1].model_sha256
    (released,) = by_kind["model_released"]
    assert released["model_sha256"] == final and released["round"] == 3 and released["final"]
    assert sorted(d["site"] for d in by_kind["model_delivered"]) == list(SITES)
    initial = by_kind["model_initial"][0]
    served_initial = encode_tensors(load_model(base / "initial.safetensors"))
    assert initial["model_sha256"] == hashlib.sha256(served_initial).hexdigest()
    initial_file = (deployment.directory / "model.safetensors").read_bytes()
    assert initial["file_sha256"] == hashlib.sha256(initial_file).hexdigest()
    assert set(by_kind["config_bundle"][0]["files"]) == {"admission.policy", "config", "task.initial_model"}
    for site, (out, _err) in zip(SITES, delivered["outputs"], strict=True):
        path = base / f"{site}-state" / "final-model.safetensors"
        digest = hashlib.sha256(path.read_bytes()).hexdigest()
        assert digest == final == json.loads(out)["final_model_sha256"]
        assert (base / f"{site}-state" / "final-model.safetensors.sha256").read_text() == f"{digest}  {path.name}\n"
        model = load_model(path)
        assert "1.running_mean" in model and "1.num_batches_tracked" in model  # the BatchNorm's buffers travel
    # docs/model-delivery.md's checks, as written there
    check = subprocess.run(["sha256sum", "-c", "final-model.safetensors.sha256"], cwd=base / "site-a-state")
    assert check.returncode == 0
    audit = _attestfl(
        "audit", "verify", str(deployment.directory / "audit-log"), "--policy", "policy.toml", "--json", cwd=base
    )
    assert audit.returncode == 0 and json.loads(audit.stdout)["models"]["final_sha256"] == final, audit.stdout[-2000:]


def test_the_owner_opens_its_sealed_copy_and_nobody_else_can(delivered: dict, tmp_path: Path) -> None:
    base, deployment = delivered["base"], delivered["deployment"]
    sealed = deployment.directory / "state" / "delivery" / f"final-model.{delivered['owner_key'][:16]}.afm"
    opened = _attestfl(
        "owner",
        "open",
        str(sealed),
        "--key",
        str(base / "owner.key"),
        "-o",
        str(tmp_path / "owner-model.safetensors"),
        "--json",
        cwd=base,
    )
    assert opened.returncode == 0, opened.stderr
    final = hashlib.sha256((base / "site-a-state" / "final-model.safetensors").read_bytes()).hexdigest()
    assert json.loads(opened.stdout)["sha256"] == final
    assert _attestfl("owner", "keygen", "-o", str(tmp_path / "other.key"), cwd=tmp_path).returncode == 0
    other = _attestfl(
        "owner",
        "open",
        str(sealed),
        "--key",
        str(tmp_path / "other.key"),
        "-o",
        str(tmp_path / "stolen.safetensors"),
        cwd=tmp_path,
    )
    assert other.returncode == 1 and "not to this key" in other.stderr
    assert not (tmp_path / "stolen.safetensors").exists()
    # The plaintext model is nowhere on the aggregator's disk: only sealed files and the sealed checkpoint.
    model = (base / "site-a-state" / "final-model.safetensors").read_bytes()
    for path in deployment.directory.rglob("*"):
        if path.is_file() and path.stat().st_size >= len(model) // 2:
            assert model[-4096:] not in path.read_bytes(), path


def test_site_verify_prints_the_claims_and_refuses_an_unpinned_measurement(delivered: dict, tmp_path: Path) -> None:
    verify = delivered["verify"]
    assert verify.returncode == 0, verify.stderr
    assert "SIMULATED TEE" in verify.stdout and "TRUSTED" in verify.stdout
    assert delivered["measurement"].hex() in verify.stdout
    claims = json.loads(delivered["verify_json"].stdout)
    assert claims["trusted"] and claims["simulated"]
    assert claims["claims"]["measurement"] == delivered["measurement"].hex()
    assert claims["claims"]["debug"] is False and claims["keys"]["x25519"] and "tcb_status" in claims["claims"]
    refused = delivered["refused"]
    assert refused.returncode == 1, refused.stderr
    result = json.loads(refused.stdout)
    assert not result["trusted"] and any("measurement" in r for r in result["reasons"])
    assert delivered["stale"] != delivered["measurement"]  # the initial model is measured
    # Nobody listening: a distinct error and exit 3, not "offered no evidence" (exit 1).
    base = delivered["base"]
    config = base / "site-a.toml"
    gone = tmp_path / "site.toml"
    gone.write_text(
        config.read_text()
        .replace(json.loads(delivered["verify_json"].stdout)["aggregator"], "127.0.0.1:9")
        .replace('"policy.toml"', f'"{base / "policy.toml"}"')
    )
    unreachable = _attestfl("site", "verify", "--config", str(gone), "--timeout", "3", cwd=base)
    assert unreachable.returncode == 3 and "cannot reach the aggregator at 127.0.0.1:9" in unreachable.stderr
    join = delivered["gone"]
    assert join.returncode == 3 and "cannot reach the aggregator" in join.stderr, join.stderr
    assert "offered no evidence" not in join.stderr


def test_release_policy_is_read_and_enforced() -> None:
    assert read_release(None) == ReleasePolicy()
    assert read_release([]).sites is False
    key = os.urandom(32)
    policy = read_release({"to": [], "owner_keys": [key.hex()]}, "every-round")
    assert policy == ReleasePolicy(sites=False, owner_keys=(key,), deliver="every-round")
    for bad, message in (
        (["everyone"], "unknown recipient"),
        ({"owner_keys": ["abcd"]}, "not an X25519 public key"),
        ({"owners": []}, "unknown key"),
    ):
        with pytest.raises(ReleaseConfigError, match=message):
            read_release(bad)
    with pytest.raises(ReleaseConfigError, match="deliver"):
        read_release(None, "sometimes")
    delivery = Delivery(policy, rounds=2, directory=Path("/nonexistent"), events=LogEvents())
    with pytest.raises(UpdateRefused, match="does not give the final model to sites"):
        delivery.check_download("site-a", 3)
    assert delivery.check_download("site-a", 2) is None  # a round's model to train on is not a release


def test_a_sealed_model_opens_only_with_its_key() -> None:
    model = encode_tensors({"w": np.arange(6, dtype=np.float32)})
    pem, public = generate_owner_key()
    sealed = seal_to_owner(model, public, 3)
    opened = open_owner_model(sealed, load_owner_key(pem))
    assert opened.model == model and opened.round == 3
    other, _ = generate_owner_key()
    with pytest.raises(DeliveryError, match="not to this key"):
        open_owner_model(sealed, load_owner_key(other))
    tampered = bytearray(sealed)
    tampered[-1] ^= 1
    with pytest.raises(DeliveryError, match="does not open"):
        open_owner_model(bytes(tampered), load_owner_key(pem))
    moved = bytearray(sealed)
    moved[68] ^= 1  # the round in the fixed header: bound into the key and the stream
    with pytest.raises(DeliveryError):
        open_owner_model(bytes(moved), load_owner_key(pem))


def test_every_round_delivery_with_a_progress_bar(tmp_path: Path) -> None:
    """deliver = "every-round": the site keeps each round's model and the owner gets each sealed;
    a model over a few MB downloads with a progress bar."""
    import io

    import torch
    from torch import nn

    from fedsite.sdk import SiteState, TorchTrainer, run_site

    torch.manual_seed(0)
    layer = nn.Linear(1100, 1100)  # 4.8 MB of float32
    pem, public = generate_owner_key()
    deployment = Deployment(
        tmp_path,
        tmp_path / "vendor",
        model={name: t.detach().numpy().copy() for name, t in layer.state_dict().items()},
        sites={"site-a": ""},
        task=f'rounds = 2\nmin_sites = 1\ndeliver = "every-round"\n[task.release]\nowner_keys = ["{public.hex()}"]',
    )
    x = torch.randn(8, 1100)

    def train(model: nn.Module) -> int:
        optimiser = torch.optim.SGD(model.parameters(), lr=0.01)
        optimiser.zero_grad()
        model(x).pow(2).mean().backward()
        optimiser.step()
        return 8

    aggregator = deployment.start()
    progress = io.StringIO()
    try:
        with deployment.client(aggregator.target, site_id="site-a") as client:
            trainer = TorchTrainer(layer, train=train)
            summary = run_site(client, trainer, progress=progress, state=SiteState(tmp_path / "s"), bars=progress)
    finally:
        aggregator.stop()
    assert "model of round 1" in progress.getvalue() and "/4.62M" in progress.getvalue()  # tqdm: 4.62 MiB
    result = verify_log(tmp_path / "audit-log", deployment.site_policy())
    assert result.valid, [str(p) for p in result.problems]
    models = result.models
    assert set(models["released"]) == {"2", "3"} and models["final_sha256"] == models["released"]["3"]

    def digest(path: Path) -> str:
        return hashlib.sha256(path.read_bytes()).hexdigest()

    assert digest(tmp_path / "s" / "model-round-1.safetensors") == models["initial_sha256"]
    assert digest(tmp_path / "s" / "model-round-2.safetensors") == models["released"]["2"]
    assert digest(tmp_path / "s" / "final-model.safetensors") == models["final_sha256"] == summary.final_model_sha256
    key = load_owner_key(pem)
    for name, round_number in (("model-round-2", 2), ("final-model", 3)):
        sealed = (tmp_path / "state" / "delivery" / f"{name}.{public.hex()[:16]}.afm").read_bytes()
        opened = open_owner_model(sealed, key)
        assert opened.round == round_number and opened.sha256 == models["released"][str(round_number)]


def test_a_restart_releases_the_checkpointed_model_under_the_digest_its_load_checked(tmp_path: Path) -> None:
    """After the last round, a restart releases the final model again. The driver serves the
    checkpoint's model where the load put it (no copy), so the SHA-256 the load checked is the one
    released and logged, and the model is not hashed a second time."""
    initial = {"w": np.arange(6, dtype=np.float32), "b": np.ones(2, np.float32)}
    config = TaskConfig(initial_model=initial, rounds=2, min_sites=1)
    sealing = SimulatedSealingKey(tmp_path, b"\x02" * 48)
    final = encode_tensors({"w": np.full(6, 0.5, np.float32), "b": np.zeros(2, np.float32)})
    save_checkpoint(tmp_path / "state", sealing, Checkpoint(3, 0, final, "2026-11-30T00:00:00Z"))
    checkpoint = load_checkpoint(tmp_path / "state", sealing)
    assert checkpoint is not None
    events = LogEvents()
    driver = make_driver(
        config, events=events, start_round=checkpoint.round, model=decode_tensors(checkpoint.model, config.spec)[0]
    )
    assert driver.task().finished and driver.model_bytes(3) is checkpoint.model
    owner_pem, owner = generate_owner_key()
    policy = ReleasePolicy(owner_keys=(owner,))
    delivery = Delivery(policy, rounds=2, directory=tmp_path / "delivery", events=events)
    delivery.start(initial, None, driver, (checkpoint.model, checkpoint.digest()))
    assert delivery.released == {3: hashlib.sha256(final).digest()}
    (sealed,) = (tmp_path / "delivery").iterdir()
    assert open_owner_model(sealed.read_bytes(), load_owner_key(owner_pem)).model == final
    # Bytes the driver does not serve as loaded are hashed, whatever digest comes with them.
    again = Delivery(policy, rounds=2, directory=tmp_path / "again", events=events)
    again.start(initial, None, driver, (bytearray(final), b"\x00" * 32))
    assert again.released == {3: hashlib.sha256(final).digest()}
