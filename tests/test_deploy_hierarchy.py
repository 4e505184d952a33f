"""deploy/kubernetes/hierarchy: a root aggregator and a StatefulSet of leaves (docs/hierarchy.md),
validated like the single aggregator's manifests (tests/test_deploy_kubernetes.py): every document
against the Kubernetes schemas, the security settings of every pod template, the metrics kept in
the pod, each init-data annotation is exactly the files mounted; and the trust chain: the leaves'
root policy pins the root's init-data digest, the root pins exactly the leaves' identities, every
shipped file is accepted by `attestfl serve` (the leaves' [parent] included)."""

from __future__ import annotations

import base64
import copy
import gzip
import tomllib
from pathlib import Path
from typing import Any

import kubernetes_validate
import numpy as np
import pytest
import yaml

from attestation.policy import Policy
from attestation.reference_values import init_data_digest
from deploy_checks import manifest_problems
from test_deploy_kubernetes import ANNOTATION, K8S, KUBERNETES_VERSION, render

TREE = K8S / "hierarchy"
MANIFESTS = sorted(TREE.rglob("*.yaml"))


def documents(path: Path) -> list[dict[str, Any]]:
    return [doc for doc in yaml.safe_load_all(path.read_text()) if doc]


def statefulset(docs: list[dict[str, Any]]) -> dict[str, Any]:
    (sts,) = [d for d in docs if d["kind"] == "StatefulSet"]
    return sts


def init_data_of(docs: list[dict[str, Any]]) -> str:
    annotations = statefulset(docs)["spec"]["template"]["metadata"]["annotations"]
    return gzip.decompress(base64.b64decode(annotations[ANNOTATION], validate=True)).decode()


def test_a_root_and_leaves_for_both_platforms() -> None:
    assert {p.relative_to(TREE).as_posix() for p in MANIFESTS} == {
        "snp/root.yaml",
        "snp/leaves.yaml",
        "tdx/root.yaml",
        "tdx/leaves.yaml",
    }
    for path in MANIFESTS:
        sts = statefulset(documents(path))
        assert sts["spec"]["template"]["spec"]["runtimeClassName"] == f"kata-qemu-{path.parent.name}"
        assert sts["spec"]["replicas"] == (1 if path.name == "root.yaml" else render.LEAVES)


@pytest.mark.parametrize("path", MANIFESTS, ids=lambda p: p.relative_to(TREE).as_posix())
def test_every_document_validates_and_is_locked_down(path: Path) -> None:
    docs = documents(path)
    assert {d["kind"] for d in docs} >= {"Namespace", "ConfigMap", "StatefulSet", "Service", "NetworkPolicy"}
    for doc in docs:
        kubernetes_validate.validate(doc, KUBERNETES_VERSION, strict=True)
    assert manifest_problems(docs) == []


def test_the_checker_sees_a_leaf_config_that_exposes_metrics_and_a_weak_init_container() -> None:
    docs = copy.deepcopy(documents(TREE / "snp/leaves.yaml"))
    config = next(d for d in docs if d["kind"] == "ConfigMap" and d["metadata"]["name"] == "attestfl-leaf-config")
    key = "attestfl-leaf-1.toml"
    config["data"][key] = config["data"][key].replace("127.0.0.1:9464", "0.0.0.0:9464")
    (enroll,) = statefulset(docs)["spec"]["template"]["spec"]["initContainers"]
    enroll["securityContext"]["runAsNonRoot"] = False
    problems = manifest_problems(docs)
    assert any(f"{key} metrics_listen '0.0.0.0:9464'" in p for p in problems), problems
    assert any("container enroll: runAsNonRoot" in p for p in problems), problems


@pytest.mark.parametrize("path", MANIFESTS, ids=lambda p: p.relative_to(TREE).as_posix())
def test_init_data_annotation_is_the_config_it_claims(path: Path) -> None:
    docs = documents(path)
    init_data = init_data_of(docs)
    which = "root" if path.name == "root.yaml" else "leaves"
    assert init_data == (TREE / f"{which}-initdata.toml").read_text()
    parsed = tomllib.loads(init_data)
    assert parsed["version"] == "0.1.0" and parsed["algorithm"] == "sha384"
    maps = {d["metadata"]["name"]: d for d in docs if d["kind"] == "ConfigMap"}
    mounted = maps[f"attestfl-{'root' if which == 'root' else 'leaf'}-config"]
    assert mounted["data"] == {k: v for k, v in parsed["data"].items() if k != "policy.rego"}
    assert (
        mounted["binaryData"]["initial.safetensors"]
        == base64.b64encode((K8S / "config/initial.safetensors").read_bytes()).decode()
    )
    assert parsed["data"]["policy.rego"] == (K8S / "config/agent-policy.rego").read_text()
    if which == "root":
        assert parsed["data"]["aggregator.toml"] == (TREE / "config/root.toml").read_text()
    else:
        for i in range(render.LEAVES):
            key = f"attestfl-leaf-{i}.toml"
            assert parsed["data"][key] == (TREE / "config" / key).read_text()


def test_each_leaf_pod_serves_its_own_file_and_enrolls_first() -> None:
    sts = statefulset(documents(TREE / "snp/leaves.yaml"))
    pod = sts["spec"]["template"]["spec"]
    (container,) = pod["containers"]
    (enroll,) = pod["initContainers"]
    assert container["args"] == ["serve", "--config", "/etc/attestfl/$(POD_NAME).toml"]
    assert enroll["args"] == ["leaf", "enroll", "--config", "/etc/attestfl/$(POD_NAME).toml", "--keep"]
    for c in (container, enroll):
        env = {e["name"]: e for e in c["env"]}
        assert env["POD_NAME"]["valueFrom"]["fieldRef"]["fieldPath"] == "metadata.name"
        assert {"mountPath": "/var/lib/attestfl", "name": "data"} in c["volumeMounts"]
    # Pod attestfl-leaf-<i> of the StatefulSet finds attestfl-leaf-<i>.toml in its ConfigMap.
    assert sts["metadata"]["name"] == "attestfl-leaf"
    keys = {k for d in documents(TREE / "snp/leaves.yaml") if d["kind"] == "ConfigMap" for k in d.get("data", {})}
    assert {f"attestfl-leaf-{i}.toml" for i in range(sts["spec"]["replicas"])} <= keys


def test_the_leaves_pin_the_roots_init_data_and_the_root_pins_the_leaves() -> None:
    root_init = (TREE / "root-initdata.toml").read_text()
    leaves = tomllib.loads((TREE / "leaves-initdata.toml").read_text())["data"]
    policy = Policy.from_toml(leaves["root-policy.toml"])
    assert policy.snp.host_data == frozenset({init_data_digest(root_init.encode(), "sev-snp")})
    assert policy.tdx.mr_config_id == frozenset({init_data_digest(root_init.encode(), "tdx")})
    assert policy.unpinned_measurements() == []
    root = tomllib.loads((TREE / "config/root.toml").read_text())
    site_ids = [tomllib.loads(leaves[f"attestfl-leaf-{i}.toml"])["parent"]["site_id"] for i in range(render.LEAVES)]
    assert sorted(root["admission"]["sites"]) == sorted(site_ids) == [f"attestfl-leaf-{i}" for i in range(3)]
    assert root["task"]["min_sites"] == render.LEAVES
    for i in range(render.LEAVES):
        parent = tomllib.loads(leaves[f"attestfl-leaf-{i}.toml"])["parent"]
        assert parent["aggregator"] == "attestfl-root.attestfl.svc.cluster.local:7443"  # the root's Service
        assert parent["policy"] == "/etc/attestfl/root-policy.toml"


def test_changing_the_root_changes_what_the_leaves_pin(tmp_path: Path) -> None:
    tree = tmp_path / "hierarchy"
    tree.mkdir()
    for source in (TREE / "config").iterdir():
        (tree / source.name).write_bytes(source.read_bytes())
    before = render.rendered_files(hierarchy=tree)
    (tree / "root.toml").write_text((tree / "root.toml").read_text() + "# changed\n")
    after = render.rendered_files(hierarchy=tree)
    changed = {p.relative_to(TREE).as_posix() for p in before if before[p] != after[p]}
    assert changed == {
        "root-initdata.toml",
        "leaves-initdata.toml",
        "snp/root.yaml",
        "snp/leaves.yaml",
        "tdx/root.yaml",
        "tdx/leaves.yaml",
    }
    (tree / "root-policy.toml").write_text("platforms = []\n")
    with pytest.raises(render.RenderError, match="@ROOT_HOST_DATA@"):
        render.rendered_files(hierarchy=tree)


def test_committed_files_are_what_render_produces() -> None:
    for path, text in render.rendered_files().items():
        assert path.read_text() == text, f"{path} is stale: run python3 deploy/kubernetes/render.py"


def _local(text: str, tmp_path: Path) -> str:
    """A shipped file with its in-pod paths moved to ``tmp_path``."""
    for name in ("policy.toml", "root-policy.toml", "initial.safetensors"):
        text = text.replace(f"/etc/attestfl/{name}", name)
    return text.replace("/var/lib/attestfl/", "")


def test_shipped_files_are_accepted_by_attestfl_serve(tmp_path: Path) -> None:
    from aggregator.config import AggregatorConfig
    from attestfl.hierarchy import read_parent
    from protocol.tensors import encode_tensors

    leaves = tomllib.loads((TREE / "leaves-initdata.toml").read_text())["data"]
    (tmp_path / "policy.toml").write_text(leaves["policy.toml"])
    (tmp_path / "root-policy.toml").write_text(leaves["root-policy.toml"])
    (tmp_path / "initial.safetensors").write_bytes(encode_tensors({"w": np.zeros(4, np.float32)}))
    (tmp_path / "root.toml").write_text(_local((TREE / "config/root.toml").read_text(), tmp_path))
    root = AggregatorConfig.load(tmp_path / "root.toml")
    assert root.parent is None and root.task.strategy.name == "fedavg" and not root.task.evaluate
    for i in range(render.LEAVES):
        key = f"attestfl-leaf-{i}.toml"
        (tmp_path / key).write_text(_local(leaves[key], tmp_path))
        config = AggregatorConfig.load(tmp_path / key)
        parent = read_parent(config)
        assert parent.site_id == f"attestfl-leaf-{i}" and parent.round_timeout == 3600
        assert parent.identity == config.state_dir / "leaf-identity.sealed"
        assert config.task.rounds == root.task.rounds
        assert set(config.admission.sites).isdisjoint(root.admission.sites)
