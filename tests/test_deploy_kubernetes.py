"""deploy/kubernetes: every manifest validates offline against the Kubernetes schemas shipped
by kubernetes-validate; every pod template is confidential, limited and non-root (and broken
copies are flagged); the init-data annotation is exactly the configuration it claims to cover;
the committed files are what render.py produces."""

from __future__ import annotations

import base64
import copy
import gzip
import importlib.util
import tomllib
from pathlib import Path
from typing import Any

import kubernetes_validate
import pytest
import yaml

from attestation.policy import Policy
from attestation.reference_values import init_data_digest
from deploy_checks import DEPLOY, manifest_problems, metrics_exposure_problems

KUBERNETES_VERSION = "1.33.0"
K8S = DEPLOY / "kubernetes"
MANIFESTS = sorted(K8S.glob("*/aggregator.yaml"))  # a hierarchy's: tests/test_deploy_hierarchy.py
ANNOTATION = "io.katacontainers.config.hypervisor.cc_init_data"


def load_render():
    spec = importlib.util.spec_from_file_location("attestfl_render", K8S / "render.py")
    assert spec and spec.loader
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


render = load_render()


def documents(path: Path) -> list[dict[str, Any]]:
    return [doc for doc in yaml.safe_load_all(path.read_text()) if doc]


def statefulset(docs: list[dict[str, Any]]) -> dict[str, Any]:
    (sts,) = [d for d in docs if d["kind"] == "StatefulSet"]
    return sts


def test_both_platforms_are_shipped() -> None:
    assert {p.relative_to(K8S).as_posix() for p in MANIFESTS} == {"snp/aggregator.yaml", "tdx/aggregator.yaml"}
    classes = {statefulset(documents(p))["spec"]["template"]["spec"]["runtimeClassName"] for p in MANIFESTS}
    assert classes == {"kata-qemu-snp", "kata-qemu-tdx"}


@pytest.mark.parametrize("path", MANIFESTS, ids=lambda p: p.relative_to(K8S).as_posix())
def test_every_document_validates_against_the_kubernetes_schema(path: Path) -> None:
    docs = documents(path)
    assert {d["kind"] for d in docs} >= {"Namespace", "ConfigMap", "StatefulSet", "Service", "NetworkPolicy"}
    for doc in docs:
        kubernetes_validate.validate(doc, KUBERNETES_VERSION, strict=True)  # raises on any error


@pytest.mark.parametrize("path", MANIFESTS, ids=lambda p: p.relative_to(K8S).as_posix())
def test_security_settings(path: Path) -> None:
    assert manifest_problems(documents(path)) == []


def test_schema_validation_rejects_a_malformed_manifest() -> None:
    sts = copy.deepcopy(statefulset(documents(MANIFESTS[0])))
    sts["spec"]["replicas"] = "one"
    with pytest.raises(kubernetes_validate.ValidationError):
        kubernetes_validate.validate(sts, KUBERNETES_VERSION, strict=True)
    sts = copy.deepcopy(statefulset(documents(MANIFESTS[0])))
    sts["spec"]["template"]["spec"]["runtimeClass"] = "kata-qemu-snp"  # misspelt key
    with pytest.raises(kubernetes_validate.ValidationError):
        kubernetes_validate.validate(sts, KUBERNETES_VERSION, strict=True)


def _broken(mutate) -> list[str]:
    docs = copy.deepcopy(documents(MANIFESTS[0]))
    pod = statefulset(docs)["spec"]["template"]["spec"]
    mutate(pod, pod["containers"][0])
    return manifest_problems(docs)


def test_checker_flags_missing_confidential_runtime_class() -> None:
    assert any("runtimeClassName None" in p for p in _broken(lambda pod, c: pod.pop("runtimeClassName")))
    assert any(
        "runtimeClassName 'kata-qemu'" in p for p in _broken(lambda pod, c: pod.update(runtimeClassName="kata-qemu"))
    )


def test_checker_flags_missing_limits() -> None:
    problems = _broken(lambda pod, c: c["resources"].pop("limits"))
    assert any("resources.limits.cpu" in p for p in problems) and any("resources.limits.memory" in p for p in problems)
    assert any(
        "resources.requests.memory" in p for p in _broken(lambda pod, c: c["resources"]["requests"].pop("memory"))
    )


def test_checker_flags_running_as_root() -> None:
    def as_root(pod: dict, container: dict) -> None:
        pod["securityContext"]["runAsUser"] = 0
        container["securityContext"]["runAsUser"] = 0
        container["securityContext"]["runAsNonRoot"] = False

    problems = _broken(as_root)
    assert any("runAsUser 0" in p for p in problems) and any("runAsNonRoot" in p for p in problems)


@pytest.mark.parametrize(
    ("mutate", "message"),
    [
        (lambda pod, c: c["securityContext"].update(allowPrivilegeEscalation=True), "allowPrivilegeEscalation"),
        (lambda pod, c: c["securityContext"].update(readOnlyRootFilesystem=False), "readOnlyRootFilesystem"),
        (lambda pod, c: c["securityContext"].update(capabilities={"drop": ["NET_RAW"]}), "drop ALL"),
        (lambda pod, c: c.pop("livenessProbe"), "livenessProbe is not a gRPC health probe"),
        (lambda pod, c: c["readinessProbe"].update(grpc={"port": 9464}), "readinessProbe is not a gRPC"),
        (lambda pod, c: pod.update(hostNetwork=True), "host namespace"),
        (lambda pod, c: pod.update(automountServiceAccountToken=True), "automountServiceAccountToken"),
    ],
)
def test_checker_flags_other_weakenings(mutate, message: str) -> None:
    assert any(message in p for p in _broken(mutate))


@pytest.mark.parametrize("path", MANIFESTS, ids=lambda p: p.relative_to(K8S).as_posix())
def test_metrics_are_not_exposed(path: Path) -> None:
    docs = documents(path)
    assert metrics_exposure_problems(docs) == []
    pod = statefulset(docs)["spec"]["template"]["spec"]
    assert [p["containerPort"] for c in pod["containers"] for p in c.get("ports", [])] == [7443]
    services = [d for d in docs if d["kind"] == "Service"]
    assert services and all([p["port"] for p in s["spec"]["ports"]] == [7443] for s in services)


def _exposing(mutate) -> list[str]:
    docs = copy.deepcopy(documents(MANIFESTS[0]))
    mutate({d["kind"] + "/" + d["metadata"]["name"]: d for d in docs})
    return manifest_problems(docs)


@pytest.mark.parametrize(
    ("mutate", "message"),
    [
        (
            lambda d: d["StatefulSet/attestfl-aggregator"]["spec"]["template"]["spec"]["containers"][0]["ports"].append(
                {"name": "metrics", "containerPort": 9464, "protocol": "TCP"}
            ),
            "container aggregator: exposes the metrics port (9464, metrics)",
        ),
        (
            lambda d: d["StatefulSet/attestfl-aggregator"]["spec"]["template"]["spec"]["containers"][0]["ports"].append(
                {"containerPort": 9464, "hostPort": 9464}
            ),
            "container aggregator: exposes the metrics port (9464)",
        ),
        (
            lambda d: d["Service/attestfl-aggregator"]["spec"]["ports"].append(
                {"name": "prom", "port": 80, "targetPort": 9464}
            ),
            "Service/attestfl-aggregator: exposes the metrics port (9464)",
        ),
        (
            lambda d: d["Service/attestfl-aggregator-headless"]["spec"]["ports"].append(
                {"name": "metrics", "port": 9464}
            ),
            "Service/attestfl-aggregator-headless: exposes the metrics port (9464, metrics)",
        ),
        (
            lambda d: d["NetworkPolicy/attestfl-aggregator"]["spec"]["ingress"][0]["ports"].append(
                {"port": 9464, "protocol": "TCP"}
            ),
            "NetworkPolicy/attestfl-aggregator: admits ingress to the metrics port (9464)",
        ),
        (
            lambda d: d["NetworkPolicy/attestfl-aggregator"]["spec"]["ingress"].append({}),
            "NetworkPolicy/attestfl-aggregator: an ingress rule without ports admits every port",
        ),
        (
            lambda d: d["ConfigMap/attestfl-aggregator-config"]["data"].update(
                {
                    "aggregator.toml": d["ConfigMap/attestfl-aggregator-config"]["data"]["aggregator.toml"].replace(
                        "127.0.0.1:9464", "0.0.0.0:9464"
                    )
                }
            ),
            "ConfigMap/attestfl-aggregator-config: aggregator.toml metrics_listen '0.0.0.0:9464' "
            "binds 0.0.0.0, not loopback",
        ),
        (
            lambda d: d["ConfigMap/attestfl-aggregator-initdata"]["data"].update(
                {
                    "initdata.toml": d["ConfigMap/attestfl-aggregator-initdata"]["data"]["initdata.toml"].replace(
                        "127.0.0.1:9464", "[::]:9464"
                    )
                }
            ),
            "ConfigMap/attestfl-aggregator-initdata: initdata.toml [data] aggregator.toml metrics_listen '[::]:9464' "
            "binds ::, not loopback",
        ),
    ],
    ids=[
        "containerPort",
        "hostPort",
        "service-targetPort",
        "headless-service",
        "networkpolicy",
        "networkpolicy-all-ports",
        "config-wildcard",
        "initdata-ipv6-wildcard",
    ],
)
def test_checker_flags_an_exposed_metrics_port(mutate, message: str) -> None:
    assert any(message in p for p in _exposing(mutate)), _exposing(mutate)


def test_committed_files_are_what_render_produces() -> None:
    for path, text in render.rendered_files().items():
        assert path.read_text() == text, f"{path} is stale: run python3 deploy/kubernetes/render.py"
    assert render.main(["--check"]) == 0


@pytest.mark.parametrize("path", MANIFESTS, ids=lambda p: p.relative_to(K8S).as_posix())
def test_init_data_annotation_is_the_config_it_claims(path: Path) -> None:
    docs = documents(path)
    annotations = statefulset(docs)["spec"]["template"]["metadata"]["annotations"]
    init_data = gzip.decompress(base64.b64decode(annotations[ANNOTATION], validate=True)).decode()
    assert init_data == (K8S / "initdata.toml").read_text()
    parsed = tomllib.loads(init_data)
    assert parsed["version"] == "0.1.0" and parsed["algorithm"] == "sha384"
    config_maps = {d["metadata"]["name"]: d["data"] for d in docs if d["kind"] == "ConfigMap"}
    mounted = config_maps["attestfl-aggregator-config"]
    # The files the aggregator is given are byte for byte the ones the measured init-data carries.
    assert mounted == {k: parsed["data"][k] for k in ("aggregator.toml", "policy.toml")}
    assert mounted["aggregator.toml"] == (K8S / "config/aggregator.toml").read_text()
    assert mounted["policy.toml"] == (K8S / "config/policy.toml").read_text()
    assert parsed["data"]["policy.rego"] == (K8S / "config/agent-policy.rego").read_text()
    assert config_maps["attestfl-aggregator-initdata"]["initdata.toml"] == init_data
    Policy.from_toml(mounted["policy.toml"])  # the shipped aggregator policy loads


def test_config_files_match_the_deployment() -> None:
    config = tomllib.loads((K8S / "config/aggregator.toml").read_text())
    assert (
        config["aggregator"]["listen"].endswith(":7443") and config["aggregator"]["metrics_listen"] == "127.0.0.1:9464"
    )
    assert config["aggregator"]["log_dir"] == "/var/lib/attestfl/log"
    assert config["aggregator"]["state_dir"] == "/var/lib/attestfl/state"
    rego = (K8S / "config/agent-policy.rego").read_text()
    assert "default ExecProcessRequest := false" in rego and "default SetPolicyRequest := false" in rego


def test_digests_snippet_pins_host_data_and_mr_config_id() -> None:
    init_data = (K8S / "initdata.toml").read_text()
    policy = Policy.from_toml(render.digests_snippet(init_data))
    assert policy.snp.host_data == frozenset({init_data_digest(init_data.encode(), "sev-snp")})
    assert policy.tdx.mr_config_id == frozenset({init_data_digest(init_data.encode(), "tdx")})


def test_changing_the_config_changes_the_annotation(tmp_path: Path) -> None:
    for name in ("aggregator.toml", "policy.toml", "agent-policy.rego", "initial.safetensors"):
        (tmp_path / name).write_bytes((K8S / "config" / name).read_bytes())
    before = render.rendered_files(config=tmp_path)
    (tmp_path / "aggregator.toml").write_text((tmp_path / "aggregator.toml").read_text() + "# changed\n")
    after = render.rendered_files(config=tmp_path)
    for path in before:
        if "hierarchy" not in path.relative_to(K8S).parts:  # the hierarchy's root.toml is not aggregator.toml
            assert before[path] != after[path], path
    (tmp_path / "policy.toml").write_text("x = '''\n")
    with pytest.raises(render.RenderError):
        render.rendered_files(config=tmp_path)


def test_shipped_config_is_accepted_by_attestfl_serve(tmp_path: Path) -> None:
    """The deployed aggregator.toml has the keys `attestfl serve` reads (paths moved to tmp)."""
    import numpy as np

    from aggregator.config import AggregatorConfig
    from protocol.tensors import encode_tensors

    text = (K8S / "config" / "aggregator.toml").read_text()
    (tmp_path / "policy.toml").write_bytes((K8S / "config" / "policy.toml").read_bytes())
    (tmp_path / "initial.safetensors").write_bytes(encode_tensors({"w": np.zeros(4, np.float32)}))
    text = text.replace("/etc/attestfl/policy.toml", "policy.toml").replace(
        "/etc/attestfl/initial.safetensors", "initial.safetensors"
    )
    text = text.replace("/var/lib/attestfl/collateral", "collateral")
    (tmp_path / "aggregator.toml").write_text(text)
    config = AggregatorConfig.load(tmp_path / "aggregator.toml")
    assert config.listen == "0.0.0.0:7443" and set(config.admission.sites) == {"hospital-a", "hospital-b", "biobank-c"}
    assert config.metrics_endpoint is not None and config.metrics_endpoint.is_loopback
    assert config.task.strategy.name == "trimmed_mean" and config.task.min_sites == 3
    assert config.admission.collateral is not None and config.admission.collateral.fetcher is not None
