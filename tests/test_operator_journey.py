"""The operator's and a site's journey as a new user follows it: `attestfl new` scaffolds, the
commands they print (run as printed, as subprocesses, simulated TEE), `attestfl config check`
and its errors, the configuration reference, `serve`'s round table and --exit-when-finished."""

from __future__ import annotations

import hashlib
import json
import os
import re
import shlex
import socket
import subprocess
import sys
from pathlib import Path

import pytest

from attestfl.cli import main
from attestfl.configtool import render_reference

ROOT = Path(__file__).resolve().parents[1]


def shim(directory: Path) -> dict[str, str]:
    """An environment whose ``attestfl`` runs this checkout with this interpreter."""
    bin_dir = directory / "bin"
    bin_dir.mkdir(exist_ok=True)
    script = bin_dir / "attestfl"
    script.write_text(f'#!/bin/sh\nexec {shlex.quote(sys.executable)} -m attestfl.cli "$@"\n')
    script.chmod(0o755)
    python_path = os.pathsep.join(p for p in (str(ROOT), os.environ.get("PYTHONPATH", "")) if p)
    return dict(os.environ, PATH=f"{bin_dir}{os.pathsep}{os.environ['PATH']}", PYTHONPATH=python_path)


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def sh(command: str, cwd: Path, env: dict[str, str], timeout: float = 300) -> subprocess.CompletedProcess[str]:
    done = subprocess.run(
        ["bash", "-c", command], cwd=cwd, env=env, capture_output=True, text=True, timeout=timeout, check=False
    )
    assert done.returncode == 0, f"{command}\nexit {done.returncode}\n{done.stdout[-3000:]}\n{done.stderr[-3000:]}"
    return done


def printed_commands(output: str) -> list[str]:
    return [line.split("$ ", 1)[1] for line in output.splitlines() if line.lstrip().startswith("$ ")]


def test_three_sites_train_the_scaffolds_model_with_the_printed_commands(tmp_path: Path) -> None:
    env = shim(tmp_path)
    port = free_port()
    new_aggregator = sh(
        f"attestfl new aggregator fl/aggregator --rounds 3 --min-sites 3 --listen 127.0.0.1:{port}", tmp_path, env
    )
    operator = printed_commands(new_aggregator.stdout)
    assert [c.split()[1:3] for c in operator] == [
        ["model", "init"],
        ["config", "add-site"],
        ["config", "check"],
        ["enclave", "measure"],
        ["serve", "--config"],
    ]
    sites = {}
    for site in ("hospital-a", "hospital-b", "hospital-c"):
        done = sh(f"attestfl new site fl/{site} --id {site} --aggregator 127.0.0.1:{port}", tmp_path, env)
        sites[site] = printed_commands(done.stdout)
        assert (tmp_path / "fl" / site / "trainer.py").is_file()
    config = "fl/aggregator/aggregator.toml"
    init, add_site, check, measure, serve = operator
    sh(init, tmp_path, env)
    for site, (enroll, _pin, _check, _run) in sites.items():
        sh(enroll, tmp_path, env)
        sh(add_site.replace("<enrolment.json>", f"fl/{site}/enrolment.json"), tmp_path, env)
    assert "OK (aggregator)" in sh(check, tmp_path, env).stdout
    measurement = sh(measure, tmp_path, env).stdout.strip()
    for site, (_enroll, pin, site_check, _run) in sites.items():
        sh(pin.replace("<aggregator.toml>", config), tmp_path, env)
        assert measurement in (tmp_path / "fl" / site / "aggregator-policy.toml").read_text()
        assert "OK (site)" in sh(site_check, tmp_path, env).stdout

    def start(command: str, name: str) -> subprocess.Popen[str]:
        return subprocess.Popen(
            ["bash", "-c", command],
            cwd=tmp_path,
            env=env,
            stdout=(tmp_path / f"{name}.out").open("w"),
            stderr=(tmp_path / f"{name}.err").open("w"),
            text=True,
        )

    server = start(serve, "serve")
    runs = {site: start(commands[3], site) for site, commands in sites.items()}
    try:
        for site, process in runs.items():
            assert process.wait(timeout=400) == 0, (tmp_path / f"{site}.err").read_text()[-3000:]
        assert server.wait(timeout=120) == 0, (tmp_path / "serve.err").read_text()[-3000:]
    finally:
        for process in (server, *runs.values()):
            if process.poll() is None:
                process.kill()
    lines = (tmp_path / "serve.out").read_text().splitlines()
    assert json.loads(lines[0])["ready"] is True
    assert lines[1].split() == ["round", "sites", "accuracy", "loss", "seconds"]
    rows = [line.split() for line in lines[2:]]
    # round r's model is the one before round r's training; round 4 is the final model
    assert [row[:2] for row in rows] == [["1", "3"], ["2", "3"], ["3", "3"], ["4", "3"]]
    assert rows[-1][-2:] == ["final", "model"]
    assert float(rows[-1][2]) > 0.8  # the scaffold's synthetic task is learnable
    events = [json.loads(line) for line in (tmp_path / "serve.err").read_text().splitlines() if line.startswith("{")]
    assert any(e.get("message") == "training_finished" for e in events)
    # One numbering everywhere: serve's row r, the logged metrics of round r, metrics.csv's row r, the site's line.
    logged: dict[int, dict[str, tuple[float, int]]] = {}
    for e in events:
        if e.get("message") == "metrics":
            logged.setdefault(e["round"], {})[e["site"]] = (e["metrics"]["accuracy"], e["examples"])
    assert sorted(logged) == [1, 2, 3, 4]
    for row in rows:
        per_site = logged[int(row[0])].values()
        weighted = sum(a * n for a, n in per_site) / sum(n for _, n in per_site)
        assert f"{weighted:.4f}" == row[2]
    for site in sites:
        csv = (tmp_path / "fl" / site / "site-state" / "metrics.csv").read_text().splitlines()
        assert csv[0] == "round,accuracy,loss" and [row.split(",")[0] for row in csv[1:]] == ["1", "2", "3", "4"]
        for row in csv[1:]:
            number, accuracy, _loss = row.split(",")
            assert float(accuracy) == logged[int(number)][site][0]
        assert "trained 3 round(s)" in (tmp_path / f"{site}.out").read_text()
        said = (tmp_path / f"{site}.err").read_text()
        for number in (1, 2, 3):
            assert f"round {number}/3: its model accuracy={logged[number][site][0]:.4f}" in said
        assert f"final model (round 4): accuracy={logged[4][site][0]:.4f}" in said
        assert "training rounds" not in said and "it/s]" not in said  # stderr is not a terminal: no bars
    # Each site ends with the final model, and its SHA-256 is the final digest the audit log names.
    policy = "fl/hospital-a/aggregator-policy.toml"  # trusts the simulated root, pins the aggregator
    verify = subprocess.run(
        ["bash", "-c", "attestfl audit verify fl/aggregator/audit-log --json --policy " + policy],
        cwd=tmp_path,
        env=env,
        capture_output=True,
        text=True,
        timeout=300,
        check=False,
    )
    assert verify.returncode in (0, 4), verify.stdout[-2000:] + verify.stderr[-2000:]
    final_sha256 = json.loads(verify.stdout)["models"]["final_sha256"]
    released = [e for e in events if e.get("message") == "model_released" and e.get("final")]
    assert [e["model_sha256"] for e in released] == [final_sha256]
    for site in sites:
        state = tmp_path / "fl" / site / "site-state"
        model = (state / "final-model.safetensors").read_bytes()
        assert hashlib.sha256(model).hexdigest() == final_sha256, site
        assert (state / "final-model.safetensors.sha256").read_text().split()[0] == final_sha256
        assert final_sha256 in (tmp_path / f"{site}.err").read_text()  # the site says which model it kept


def test_scaffolds_refuse_to_overwrite(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["new", "site", str(tmp_path / "s"), "--id", "hospital-a"]) == 0
    capsys.readouterr()
    assert main(["new", "site", str(tmp_path / "s"), "--id", "hospital-a"]) == 2
    assert "already has site.toml" in capsys.readouterr().err
    assert main(["new", "site", str(tmp_path / "t"), "--id", "bad id!"]) == 2


def test_a_trainer_file_next_to_site_toml_loads_without_pythonpath(tmp_path: Path) -> None:
    from fedsite.trainer_loading import load_factory
    from protocol.config import ConfigError

    (tmp_path / "helper_mod_xyz.py").write_text("VALUE = 41\n")
    (tmp_path / "my_trainer.py").write_text(
        "from helper_mod_xyz import VALUE\n\ndef make(data, base):\n    return VALUE + 1\n"
    )
    assert load_factory("my_trainer.py:make", tmp_path)({}, tmp_path) == 42
    assert str(tmp_path) not in sys.path
    with pytest.raises(ConfigError, match=r"no such file"):
        load_factory("missing.py:make", tmp_path)
    with pytest.raises(ConfigError, match=r"has no function 'nope'"):
        load_factory("my_trainer.py:nope", tmp_path)
    with pytest.raises(ConfigError, match=r"expected"):
        load_factory("my_trainer.py", tmp_path)


# ---- config check -----------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def aggregator_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    directory = tmp_path_factory.mktemp("agg") / "aggregator"
    assert main(["new", "aggregator", str(directory)]) == 0
    import numpy as np

    from protocol.tensors import encode_tensors

    (directory / "initial.safetensors").write_bytes(encode_tensors({"w": np.zeros((2, 2), np.float32)}))
    return directory


@pytest.mark.parametrize(
    ("edit", "message"),
    [
        (("rounds = 3", 'rounds = "x"'), r'\[task\] rounds: expected an integer from 1 to 100000, got "x"'),
        (("rounds = 3", "roundz = 3"), r"\[task\]: unknown key\(s\) roundz; allowed: initial_model, rounds, "),
        (('log_dir = "audit-log"', 'log_dr = "x"'), r"\[aggregator\]: unknown key\(s\) log_dr; allowed: listen, tee,"),
        (
            ('collateral_dir = "collateral"', 'collateral_dir = "collateral"\nttl = 3'),
            r"\[admission\]: unknown key\(s\) ttl; allowed: challenge_ttl,",
        ),
        (('tee = "simulated-snp"', 'tee = "sgx"'), r'\[aggregator\] tee: expected one of "auto", '),
    ],
)
def test_config_check_names_the_file_the_key_and_what_is_allowed(
    aggregator_dir: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str], edit: tuple[str, str], message: str
) -> None:
    good = aggregator_dir / "aggregator.toml"
    assert main(["config", "check", str(good)]) == 0
    assert "OK (aggregator)" in capsys.readouterr().out
    bad = aggregator_dir / "bad.toml"
    text = good.read_text()
    assert edit[0] in text
    bad.write_text(text.replace(edit[0], edit[1]))
    assert main(["config", "check", str(bad)]) == 2
    error = capsys.readouterr().err.strip()
    assert len(error.splitlines()) == 1
    assert error.startswith(f"attestfl: error: {bad}") and re.search(message, error), error


def test_config_check_detects_each_kind(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["new", "site", str(tmp_path / "s"), "--id", "hospital-a"]) == 0
    capsys.readouterr()
    # a site whose aggregator policy pins no measurement yet is refused, naming the key
    assert main(["config", "check", str(tmp_path / "s" / "site.toml")]) == 2
    assert "[site] policy aggregator-policy.toml" in capsys.readouterr().err
    site = tmp_path / "s" / "site.toml"
    bad = tmp_path / "s" / "bad.toml"
    bad.write_text(site.read_text().replace('state_dir = "site-state"', 'state_dir = "site-state"\nstat = 1'))
    assert main(["config", "check", str(bad)]) == 2
    assert re.search(r"\[site\]: unknown key\(s\) stat; allowed: id, aggregator, tee", capsys.readouterr().err)
    assert main(["config", "pin", str(site), "--measurement", "ab" * 48]) == 0
    assert main(["config", "check", str(site)]) == 0
    assert "OK (site)" in capsys.readouterr().out
    assert main(["config", "check", str(tmp_path / "s" / "aggregator-policy.toml")]) == 0
    assert "OK (policy)" in capsys.readouterr().out
    task = tmp_path / "task.toml"
    task.write_text('[task]\ninitial_model = "m.safetensors"\nrounds = 0\n')
    assert main(["config", "check", str(task)]) == 2
    assert "[task] rounds: expected an integer from 1 to 100000, got 0" in capsys.readouterr().err
    admission = tmp_path / "admission.toml"
    admission.write_text('[admission.sites.a]\nplatforms = ["sev-snp"]\n')
    assert main(["config", "check", str(admission)]) == 2
    assert "[admission.sites.a]: the rule pins nothing" in capsys.readouterr().err


def test_the_configuration_reference_is_generated_from_the_schema() -> None:
    committed = (ROOT / "docs" / "configuration.md").read_text()
    assert committed == render_reference(), "drifted: run attestfl config reference > docs/configuration.md"
    keys = ("listen", "stall_timeout", "challenge_ttl", "identity_keys", "round_deadline", "noise_multiplier")
    for key in (*keys, "max_clock_skew", "trainer"):
        assert f"| `{key}` |" in committed


def test_tee_auto_without_a_tee_is_a_configuration_error(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    if Path("/dev/sev-guest").exists() or Path("/sys/kernel/config/tsm/report").exists():
        pytest.skip("this machine has a TEE")
    assert main(["new", "site", str(tmp_path / "s"), "--id", "hospital-a", "--tee", "auto"]) == 0
    capsys.readouterr()
    assert main(["site", "enroll", "--config", str(tmp_path / "s" / "site.toml")]) == 2
    error = capsys.readouterr().err
    assert "internal error" not in error and "--tee" not in error and len(error.strip().splitlines()) == 1
    assert '[site] tee = "auto": no TEE found' in error and "Allowed: auto, sev-snp, tdx, simulated-snp" in error


def test_a_second_serve_on_the_same_port_is_refused(tmp_path: Path) -> None:
    from tests.federation import Deployment, run_aggregator

    first = Deployment(tmp_path / "one", tmp_path / "sim", listen=f"127.0.0.1:{free_port()}")
    first.directory.mkdir()
    second = Deployment(tmp_path / "two", tmp_path / "sim", listen=first.listen)
    second.directory.mkdir()
    config = second.write()
    for aggregator in run_aggregator(first):
        done = subprocess.run(
            [sys.executable, "-m", "attestfl.cli", "serve", "--config", str(config)],
            env=shim(tmp_path),
            capture_output=True,
            text=True,
            timeout=120,
            check=False,
        )
        assert done.returncode == 2, done.stderr
        assert "cannot listen there" in done.stderr and not done.stdout
        assert aggregator.process.poll() is None


@pytest.mark.parametrize("platform", ["snp", "tdx"])
def test_the_kubernetes_manifest_mounts_the_initial_model_it_names(platform: str) -> None:
    import base64
    import posixpath
    import tomllib

    import yaml

    documents = list(yaml.safe_load_all((ROOT / "deploy" / "kubernetes" / platform / "aggregator.yaml").read_text()))
    config_map = next(d for d in documents if d["kind"] == "ConfigMap" and d["metadata"]["name"].endswith("-config"))
    pod = next(d for d in documents if d["kind"] == "StatefulSet")["spec"]["template"]["spec"]
    volume = next(v for v in pod["volumes"] if v.get("configMap", {}).get("name") == config_map["metadata"]["name"])
    mount = next(m for c in pod["containers"] for m in c["volumeMounts"] if m["name"] == volume["name"])
    initial_model = tomllib.loads(config_map["data"]["aggregator.toml"])["task"]["initial_model"]
    directory, name = posixpath.split(initial_model)
    assert directory == mount["mountPath"], f"{initial_model} is not in the config mount {mount['mountPath']}"
    model = base64.b64decode(config_map["binaryData"][name])
    assert model == (ROOT / "deploy" / "kubernetes" / "config" / name).read_bytes()


def test_the_shipped_initial_model_loads(tmp_path: Path) -> None:
    from protocol.tensors import load_model

    tensors = load_model(ROOT / "deploy" / "kubernetes" / "config" / "initial.safetensors")
    assert sum(t.size for t in tensors.values()) == 451


def test_site_run_retries_an_unreachable_aggregator_then_exits_3(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    site = tmp_path / "s"
    assert main(["new", "site", str(site), "--id", "s", "--aggregator", f"127.0.0.1:{free_port()}"]) == 0
    assert main(["site", "enroll", "--config", str(site / "site.toml")]) == 0
    assert main(["config", "pin", str(site / "site.toml"), "--measurement", "ab" * 48]) == 0
    capsys.readouterr()
    assert main(["site", "run", "--config", str(site / "site.toml"), "--wait", "2"]) == 3  # a fault, not a refusal
    err = capsys.readouterr().err
    assert "retrying in" in err and "cannot reach the aggregator at 127.0.0.1:" in err
    assert "offered no evidence" not in err


def test_more_config_errors_name_the_key(
    aggregator_dir: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    good = (aggregator_dir / "aggregator.toml").read_text()
    bad = aggregator_dir / "bad-policy.toml"
    bad.write_text(good.replace('policy = "site-policy.toml"', 'policy = "nope.toml"'))
    assert main(["config", "check", str(bad)]) == 2
    assert f"{bad}: [admission] policy: cannot read" in capsys.readouterr().err
    assert main(["new", "site", str(tmp_path / "s"), "--id", "a"]) == 0
    site = tmp_path / "s" / "site.toml"
    site.write_text(site.read_text().replace('aggregator = "127.0.0.1:7443"', 'aggregator = "localhost"'))
    capsys.readouterr()
    assert main(["config", "check", str(site)]) == 2
    assert "[site] aggregator: expected host:port with a port from 1 to 65535" in capsys.readouterr().err
