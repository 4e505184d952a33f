"""Hierarchical attested aggregation (attestfl/hierarchy.py, docs/hierarchy.md) on loopback, real
`attestfl serve` processes: 1 root, 3 leaves, 12 sites (4 per leaf), 2 rounds. The final model is
the flat federation's (to float32 tolerance); the root admitted exactly the 3 leaves; a leaf whose
identity the root does not pin is refused; no update is on disk in plaintext; each log verifies."""

from __future__ import annotations

import io
import json
import os
import subprocess
import sys
import threading
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import numpy as np
import pytest

from attestation.policy import Policy
from attestfl.cli import main
from attestfl.hierarchy import check_tree, tree_differences
from attestfl.loopback import Aggregator
from auditor.verify import verify_log
from federation import MODEL, Deployment
from protocol.config import ConfigError
from protocol.tensors import ModelSpec, encode_tensors

LEAVES = ("leaf-1", "leaf-2", "leaf-3")
SITES = {leaf: [f"{leaf}-site-{i}" for i in range(4)] for leaf in LEAVES}
ROUNDS = 2


def _delta(site_number: int, round_number: int) -> dict[str, np.ndarray]:
    rng = np.random.default_rng(1000 * round_number + site_number)
    return {name: rng.normal(0, 0.1, array.shape).astype(np.float32) for name, array in MODEL.items()}


def _weight(site_number: int) -> float:
    return float(3 + 7 * site_number)  # 3 .. 80: unequal leaf totals


def _flat_final() -> dict[str, np.ndarray]:
    """The flat federation of all 12 sites: each round the global model plus the weighted mean of the deltas."""
    model = {name: array.astype(np.float64) for name, array in MODEL.items()}
    sites = range(12)
    for round_number in range(1, ROUNDS + 1):
        total = sum(_weight(s) for s in sites)
        for name in model:
            model[name] = model[name] + sum(_weight(s) * _delta(s, round_number)[name] for s in sites) / total
    return model


def _root_policy(root: Deployment) -> str:
    roots = ", ".join(f'"{fp}"' for fp in root.roots.values())
    return (
        f'platforms = ["sev-snp"]\ntrusted_simulated_roots = [{roots}]\n'
        f'[sev-snp]\nmeasurement = ["{root.measurement().hex()}"]\n'
    )


def _leaf(base: Path, sim: Path, leaf: str, site_id: str, target: str) -> Deployment:
    parent = f'\n[parent]\naggregator = "{target}"\nsite_id = "{site_id}"\npolicy = "root-policy.toml"\n'
    deployment = Deployment(
        base / leaf,
        sim,
        sites=dict.fromkeys(SITES.get(leaf, []), ""),
        task=f'rounds = {ROUNDS}\nmin_sites = 4\nround_deadline = "120s"\nevaluate = false\n{parent}',
    )
    deployment.directory.mkdir(exist_ok=True)
    return deployment


def _enroll(deployment: Deployment) -> str:
    out = io.StringIO()
    config = deployment.write()
    args = ["leaf", "enroll", "--config", str(config), "--json"]
    from attestfl.cli import build_parser

    parsed = build_parser().parse_args(args)
    assert parsed.handler(parsed, out) == 0
    return json.loads(out.getvalue())["identity_public"]


def _serve(deployment: Deployment, target: str, root: Deployment, policy: str | None = None) -> subprocess.Popen:
    (deployment.directory / "root-policy.toml").write_text(policy or _root_policy(root))
    config = deployment.write()
    stderr = (deployment.directory / "aggregator.stderr").open("wb")
    return subprocess.Popen(
        [sys.executable, "-m", "attestfl.cli", "serve", "--config", str(config), "--progress", "none"],
        stdout=subprocess.PIPE,
        stderr=stderr,
        cwd=deployment.directory,
        env=dict(os.environ, PYTHONUNBUFFERED="1"),
        start_new_session=True,
    )


def _ready(deployment: Deployment, process: subprocess.Popen, timeout: float = 120) -> Aggregator:
    assert process.stdout is not None
    line = process.stdout.readline()
    if not line:
        process.wait(timeout)
        raise AssertionError((deployment.directory / "aggregator.stderr").read_text()[-3000:])
    return Aggregator(
        process, json.loads(line), deployment.directory / "aggregator.toml", deployment.directory / "aggregator.stderr"
    )


@pytest.fixture(scope="module")
def tree(tmp_path_factory: pytest.TempPathFactory) -> dict:
    base = tmp_path_factory.mktemp("tree")
    sim = base / "sim"
    root = Deployment(
        base / "root",
        sim,
        sites=dict.fromkeys(LEAVES, ""),
        task=f'rounds = {ROUNDS}\nmin_sites = 3\nround_deadline = "120s"\nevaluate = false',
    )
    root.directory.mkdir()
    leaves = {leaf: _leaf(base, sim, leaf, leaf, "127.0.0.1:1") for leaf in LEAVES}
    for leaf, deployment in leaves.items():  # `attestfl leaf enroll`: the root pins each printed key
        root.sites[leaf] = f'identity_keys = ["{_enroll(deployment)}"]'
    # An impostor: a leaf enrolled under leaf-2's name with its own key, which the root does not pin.
    impostor = _leaf(base, sim, "impostor", "leaf-2", "127.0.0.1:1")
    _enroll(impostor)
    # A misled leaf: its policy for the root pins another measurement; it must send the root nothing.
    misled = _leaf(base, sim, "misled", "leaf-1", "127.0.0.1:1")
    _enroll(misled)
    started: list[Aggregator] = []
    result: dict = {"root": root, "leaves": leaves, "base": base}
    try:
        server = root.start()
        started.append(server)
        target = server.target
        for deployment in (*leaves.values(), impostor, misled):
            deployment.task = deployment.task.replace("127.0.0.1:1", target)
        rogue = _serve(impostor, target, root)
        wrong = _root_policy(root).replace(root.measurement().hex(), "ab" * 48)
        fooled = _serve(misled, target, root, wrong)
        result["impostor"] = (rogue.wait(120), (impostor.directory / "aggregator.stderr").read_text())
        result["misled"] = (fooled.wait(120), (misled.directory / "aggregator.stderr").read_text(), misled)
        processes = {leaf: _serve(deployment, target, root) for leaf, deployment in leaves.items()}
        servers = {leaf: _ready(leaves[leaf], process) for leaf, process in processes.items()}
        started.extend(servers.values())
        finals: dict[str, dict[str, np.ndarray]] = {}
        lock = threading.Lock()
        numbers = {site: n for n, site in enumerate(s for leaf in LEAVES for s in SITES[leaf])}

        def run_site(leaf: str, site: str) -> None:
            deployment = leaves[leaf]
            with deployment.client(servers[leaf].target, site_id=site) as client:
                client.join()
                for round_number in range(1, ROUNDS + 1):
                    deadline = time.time() + 90
                    while client.task().round != round_number:
                        assert time.time() < deadline, f"{site}: round {round_number} never opened"
                        time.sleep(0.1)
                    client.upload_update(
                        round_number, _delta(numbers[site], round_number), weight=_weight(numbers[site])
                    )
                deadline = time.time() + 90
                while not (task := client.task()).finished:
                    assert time.time() < deadline, f"{site}: training never finished"
                    time.sleep(0.1)
                final = client.download_model(task.round, ModelSpec.of(MODEL))
                with lock:
                    finals[site] = final

        started_at = time.monotonic()
        with ThreadPoolExecutor(12) as pool:
            for future in [pool.submit(run_site, leaf, site) for leaf in LEAVES for site in SITES[leaf]]:
                future.result()
        result["seconds"] = time.monotonic() - started_at
        result["finals"] = finals
    finally:
        for server in reversed(started):
            server.stop()
    return result


def test_the_tree_computes_the_flat_federations_model(tree: dict) -> None:
    expected = _flat_final()
    assert len(tree["finals"]) == 12
    for site, final in tree["finals"].items():
        for name, array in expected.items():
            np.testing.assert_allclose(final[name], array, rtol=1e-5, atol=1e-6, err_msg=site)
    # Each leaf's final model is the root's, byte for byte (one digest in every log).
    digests = set()
    for deployment in (tree["root"], *tree["leaves"].values()):
        finished = [
            e
            for e in verify_log(deployment.directory / "audit-log", deployment.site_policy()).entries
            if e.kind == "training_finished"
        ]
        digests.add(finished[-1].fields["model_sha256"])
    assert len(digests) == 1
    print(f"tree of 1 root, 3 leaves, 12 sites, {ROUNDS} rounds: {tree['seconds']:.1f} s")


def test_the_root_admitted_exactly_the_three_leaves_and_refused_the_impostor(tree: dict) -> None:
    status, stderr = tree["impostor"]
    assert status == 1, stderr
    assert "admission refused" in stderr
    root = tree["root"]
    verification = verify_log(root.directory / "audit-log", root.site_policy())
    assert verification.valid, verification.problems
    admitted = sorted({d.site for d in verification.admissions if d.admitted})
    assert admitted == list(LEAVES)
    refused = [d for d in verification.admissions if not d.admitted]
    assert [d.site for d in refused] == ["leaf-2"]
    assert any("identity" in reason for reason in refused[0].reasons)
    rounds = [e.fields for e in verification.entries if e.kind == "round"]
    assert [sorted(r["participants"]) for r in rounds] == [list(LEAVES)] * ROUNDS
    weights = {leaf: sum(_weight(n) for n in range(4 * i, 4 * i + 4)) for i, leaf in enumerate(LEAVES)}
    assert {leaf: p["weight"] for leaf, p in rounds[0]["participants"].items()} == weights


def test_a_leaf_sends_nothing_to_a_root_its_policy_does_not_pin(tree: dict) -> None:
    status, stderr, misled = tree["misled"]
    assert status == 1, stderr
    assert "evidence fails this site's policy" in stderr and "measurement" in stderr
    verification = verify_log(misled.directory / "audit-log", misled.site_policy())
    assert verification.valid, verification.problems
    (refused,) = [e.fields for e in verification.entries if e.kind == "parent_refused"]
    assert refused["by"] == "leaf" and refused["site"] == "leaf-1"
    assert not [e for e in verification.entries if e.kind in ("parent_joined", "parent_forward")]
    # The root never heard from it: its only refusal is the impostor's (previous test).


def test_each_leaf_logs_its_forwards_and_verifies(tree: dict) -> None:
    root_entries = verify_log(tree["root"].directory / "audit-log", tree["root"].site_policy()).entries
    accepted = {
        (e.fields["site"], e.fields["round"]): e.fields["update_sha256"]
        for e in root_entries
        if e.kind == "update_accepted"
    }
    for leaf, deployment in tree["leaves"].items():
        verification = verify_log(deployment.directory / "audit-log", deployment.site_policy())
        assert verification.valid, verification.problems
        kinds = [e.kind for e in verification.entries]
        assert kinds.count("parent_joined") == 1
        forwards = [e.fields for e in verification.entries if e.kind == "parent_forward"]
        assert [f["round"] for f in forwards] == list(range(1, ROUNDS + 1))
        for forward in forwards:
            assert (
                accepted[(leaf, forward["round"])] == forward["partial_sha256"] == forward["receipt"]["update_sha256"]
            )
        models = [e.fields for e in verification.entries if e.kind == "parent_model"]
        rounds = [e.fields for e in verification.entries if e.kind == "round"]
        assert [m["model_sha256"] for m in models] == [r["model_sha256"] for r in rounds]
        assert all(m["forwarded"] for m in models)
        assert sorted(rounds[0]["participants"]) == sorted(SITES[leaf])


def test_no_update_is_on_disk_in_plaintext(tree: dict) -> None:
    needles = [_delta(n, r)["dense.weight"].tobytes()[:16] for n in range(12) for r in range(1, ROUNDS + 1)]
    needles += [encode_tensors(_delta(0, 1), {"weight": repr(_weight(0))})[:64]]
    # The leaves' partial aggregates: their safetensors header (shapes, offsets, the leaf's weight) leads the plaintext.
    for i in range(len(LEAVES)):
        weight = sum(_weight(n) for n in range(4 * i, 4 * i + 4))
        needles.append(encode_tensors(_delta(0, 1), {"weight": repr(float(weight))})[:64])
    for path in tree["base"].rglob("*"):
        if path.is_file():
            data = path.read_bytes()
            assert not any(needle in data for needle in needles), path


def test_a_tree_preserves_fedavg_only_unless_the_operator_opts_in(tmp_path: Path) -> None:
    from aggregator.rounds import TaskConfig

    def task(extra: str) -> TaskConfig:
        (tmp_path / "model.safetensors").write_bytes(encode_tensors(MODEL))
        import tomllib

        return TaskConfig.from_table(tomllib.loads(f'initial_model = "model.safetensors"\n{extra}'), tmp_path)

    assert tree_differences(task("")) == []
    assert tree_differences(task("clip_norm = 1.0")) == []  # per-site clipping, as the flat aggregator's
    assert tree_differences(task("[drift]\nnorm_ratio = 3.0")) == []  # alerts only: the model is unchanged
    for extra, word in (
        ('strategy = "median"', "median"),
        ('[strategy]\nname = "trimmed_mean"\nbeta = 0.1', "trimmed"),
        ("[dp]\nclip_norm = 1.0\nnoise_multiplier = 1.0", "noise"),
        ("[drift]\nnorm_ratio = 3.0\nquarantine = true", "quarantine"),
    ):
        config = task(extra)
        with pytest.raises(ConfigError, match="allow_not_flat") as refused:
            check_tree(config, allow_not_flat=False)
        assert word in str(refused.value)
        check_tree(config, allow_not_flat=True)
    with pytest.raises(ConfigError, match="sync"):
        check_tree(task('mode = "async"'), allow_not_flat=True)


def _serve_refused(deployment: Deployment) -> tuple[Path, str]:
    """``attestfl serve`` on the leaf's file: refused with exit 2 and one line (the config, the line)."""
    import contextlib

    (deployment.directory / "root-policy.toml").write_text('platforms = ["sev-snp"]\n')
    config = deployment.write()
    err = io.StringIO()
    with contextlib.redirect_stderr(err):
        status = main(["serve", "--config", str(config)])
    assert status == 2
    line = err.getvalue().strip()
    assert len(line.splitlines()) == 1
    return config, line


def test_serve_refuses_a_leaf_whose_strategy_a_tree_does_not_preserve(tmp_path: Path) -> None:
    deployment = _leaf(tmp_path, tmp_path / "sim", "leaf-x", "leaf-x", "127.0.0.1:1")
    deployment.task = deployment.task.replace("evaluate = false", 'evaluate = false\nstrategy = "median"')
    config, line = _serve_refused(deployment)
    assert line.startswith(f"attestfl: error: {config}: ") and "allow_not_flat" in line


def test_serve_refuses_a_leaf_whose_root_policy_pins_no_measurement(tmp_path: Path) -> None:
    deployment = _leaf(tmp_path, tmp_path / "sim", "leaf-x", "leaf-x", "127.0.0.1:1")
    config, line = _serve_refused(deployment)
    assert line.startswith(f"attestfl: error: {config}: [parent] policy root-policy.toml: ")
    assert "[parent] INSECURE_accept_any_aggregator" in line and len(line.splitlines()) == 1


def test_an_auditor_checks_both_levels_together(tree: dict, tmp_path: Path) -> None:
    from auditor.tree import verify_tree

    root = tree["root"]
    leaves = [d.directory / "audit-log" for d in tree["leaves"].values()]
    # One policy for every log: the simulated vendor's roots (each log's own evidence pins its own code).
    simulated = Policy(trusted_simulated_roots=frozenset(root.roots.values()))
    result = verify_tree(root.directory / "audit-log", leaves, simulated)
    assert result.logs_valid and result.valid, [str(p) for p in result.problems]
    # The command line: one leaf's log missing -> the root admitted a leaf not given.
    policy = tmp_path / "policy.toml"
    roots = ", ".join(f'"{fp}"' for fp in root.roots.values())
    policy.write_text(f"trusted_simulated_roots = [{roots}]\n")
    out = io.StringIO()
    args = ["audit", "tree", str(root.directory / "audit-log"), *map(str, leaves[:2]), "--policy", str(policy)]
    from attestfl.cli import build_parser

    parsed = build_parser().parse_args([*args, "--json"])
    assert parsed.handler(parsed, out) == 1
    report = json.loads(out.getvalue())
    assert report["valid"] is False and report["problems"] == [
        f"tree.admitted: {root.directory / 'audit-log'}: the root admitted site(s) whose leaf logs were not given: "
        "leaf-3"
    ]
    out = io.StringIO()
    parsed = build_parser().parse_args([*args[:3], *map(str, leaves), "--policy", str(policy)])
    assert parsed.handler(parsed, out) == 0, out.getvalue()
    for log in (root.directory / "audit-log", *leaves):  # `attestfl audit verify` passes on each log
        parsed = build_parser().parse_args(["audit", "verify", str(log), "--policy", str(policy)])
        assert parsed.handler(parsed, io.StringIO(), io.StringIO()) == 0, log
    # A leaf's log checked against a root it never joined.
    other = verify_tree(leaves[0], leaves[1:], simulated)
    assert any(p.check == "tree.parent_key" for p in other.problems)


def test_config_check_reads_a_leafs_parent_table(tmp_path: Path) -> None:
    deployment = _leaf(tmp_path, tmp_path / "sim", "leaf-x", "leaf-x", "127.0.0.1:7443")
    (deployment.directory / "root-policy.toml").write_text(
        'platforms = ["sev-snp"]\n[sev-snp]\nmeasurement = ["' + "ab" * 48 + '"]\n'
    )
    config = deployment.write()
    out = io.StringIO()
    from attestfl.cli import build_parser

    parsed = build_parser().parse_args(["config", "check", str(config)])
    assert parsed.handler(parsed, out) == 0
    assert "leaf leaf-x of 127.0.0.1:7443" in out.getvalue()
    config.write_text(config.read_text().replace('site_id = "leaf-x"', 'site_id = "leaf x"'))
    err = io.StringIO()
    import contextlib

    with contextlib.redirect_stderr(err):
        assert main(["config", "check", str(config)]) == 2
    assert err.getvalue() == f"attestfl: error: {config}: [parent] site_id: 1-128 letters, digits, '-', '_' or '.'\n"


def test_a_leaf_waiting_for_its_root_stops_at_once(tmp_path: Path) -> None:
    """SIGTERM reaches a leaf whose round is closing while it waits for the root's next model
    (the root waits for another leaf): the leaf gives the close up (nothing committed), stops
    within seconds, not after ``[parent] round_timeout``, and exits 0 (a stop, not a fault)."""
    sim = tmp_path / "sim"
    root = Deployment(
        tmp_path / "root",
        sim,
        sites={"leaf-1": "", "leaf-2": ""},
        task='rounds = 2\nmin_sites = 2\nround_deadline = "600s"\nevaluate = false',
    )
    root.directory.mkdir()
    parent = '\n[parent]\naggregator = "127.0.0.1:1"\nsite_id = "leaf-1"\npolicy = "root-policy.toml"\n'
    leaf = Deployment(
        tmp_path / "leaf-1",
        sim,
        sites={"site-x": ""},
        task=f'rounds = 2\nmin_sites = 1\nround_deadline = "600s"\nevaluate = false\n{parent}',
    )
    leaf.directory.mkdir()
    other = _leaf(tmp_path, sim, "leaf-2", "leaf-2", "127.0.0.1:1")  # enrolled, never started
    root.sites["leaf-1"] = f'identity_keys = ["{_enroll(leaf)}"]'
    root.sites["leaf-2"] = f'identity_keys = ["{_enroll(other)}"]'
    server = root.start()
    process: subprocess.Popen | None = None
    try:
        leaf.task = leaf.task.replace("127.0.0.1:1", server.target)
        process = _serve(leaf, server.target, root)
        served = _ready(leaf, process)
        with leaf.client(served.target, site_id="site-x") as client:
            client.join()
            client.upload_update(1, _delta(0, 1), weight=1.0)  # the leaf's round 1 closes: it forwards
        deadline = time.time() + 60
        while not any(e["message"] == "parent_forward" for e in served.events()):
            assert time.time() < deadline, "the leaf never forwarded"
            time.sleep(0.1)
        time.sleep(0.5)  # the leaf now waits for the root, whose round waits for leaf-2
        stopping = time.monotonic()
        os.killpg(process.pid, 15)
        code = process.wait(timeout=30)
        seconds = time.monotonic() - stopping
        assert code == 0, (leaf.directory / "aggregator.stderr").read_text()[-2000:]
        assert seconds < 10, f"the leaf took {seconds:.1f} s to stop"
        messages = [e["message"] for e in served.events()]
        assert "round" not in messages, "nothing of the abandoned close is committed"
    finally:
        if process is not None and process.poll() is None:
            process.kill()
        server.stop()
