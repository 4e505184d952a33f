#!/usr/bin/env python3
"""Render the attestfl aggregator manifests for Kubernetes with Confidential Containers.

Source of truth: ``config/aggregator.toml``, ``config/policy.toml`` and
``config/agent-policy.rego``. From them this script writes

- ``initdata.toml``: the CoCo init-data (the three files under ``[data]``), whose digest the
  host puts into SEV-SNP HOST_DATA / TDX MRCONFIGID, so the attestation report covers the
  aggregator's configuration and the agent policy;
- ``snp/aggregator.yaml`` and ``tdx/aggregator.yaml``: Namespace, ConfigMaps, StatefulSet,
  Services and NetworkPolicy (gRPC only: the unauthenticated metrics stay on the pod's
  loopback), identical except for ``runtimeClassName``
  (``kata-qemu-snp`` / ``kata-qemu-tdx``); the pod carries the init-data as the
  ``io.katacontainers.config.hypervisor.cc_init_data`` annotation (base64 of gzip).

Usage (from the repository root)::

    python3 deploy/kubernetes/render.py [--image REGISTRY/attestfl/aggregator@sha256:DIGEST]
    python3 deploy/kubernetes/render.py --check     # exit 1 if the committed files are stale
    python3 deploy/kubernetes/render.py --digests   # HOST_DATA / MRCONFIGID policy snippets

Never edit the rendered files by hand; tests compare them with this script's output.
"""

from __future__ import annotations

import argparse
import base64
import copy
import gzip
import hashlib
import sys
from pathlib import Path
from typing import Any

import yaml

HERE = Path(__file__).resolve().parent
CONFIG = HERE / "config"
NAMESPACE = "attestfl"
APP = "attestfl-aggregator"
UID = 10001
GRPC_PORT = 7443
#: Prometheus metrics: bound to 127.0.0.1 inside the pod by config/aggregator.toml, never exposed.
METRICS_PORT = 9464
INIT_DATA_ANNOTATION = "io.katacontainers.config.hypervisor.cc_init_data"
INIT_DATA_ALGORITHM = "sha384"
#: Placeholder: deploy the digest your reproducible build printed (deploy/container/README.md).
DEFAULT_IMAGE = "registry.example.org/attestfl/aggregator@sha256:" + "0" * 64
RUNTIME_CLASSES = {"snp": "kata-qemu-snp", "tdx": "kata-qemu-tdx"}
#: init-data [data] key -> file under config/ ; the first two are also the config ConfigMap.
INIT_DATA_FILES = {
    "aggregator.toml": "aggregator.toml",
    "policy.toml": "policy.toml",
    "policy.rego": "agent-policy.rego",
}
CONFIGMAP_KEYS = ("aggregator.toml", "policy.toml")
#: The initial model ([task] initial_model), shipped in the config ConfigMap as binary data and
#: so mounted at /etc/attestfl/initial.safetensors. Replace it with yours (`attestfl model init`);
#: a ConfigMap holds at most 1 MiB: a larger model goes on a volume or in the image.
MODEL_FILE = "initial.safetensors"


class RenderError(Exception):
    """A source file cannot be carried in the init-data."""


def _source_text(path: Path) -> str:
    text = path.read_text(encoding="utf-8")
    if "'''" in text:
        raise RenderError(f"{path.name} contains ''' and cannot be a TOML literal string")
    if not text.endswith("\n"):
        raise RenderError(f"{path.name} must end with a newline")
    return text


def read_sources(config: Path = CONFIG) -> dict[str, str]:
    sources = {}
    for key, name in INIT_DATA_FILES.items():
        sources[key] = _source_text(config / name)
    model = config / MODEL_FILE
    if not model.is_file():
        raise RenderError(f"{model}: missing: the initial model ([task] initial_model; make it: attestfl model init)")
    sources[MODEL_FILE] = base64.b64encode(model.read_bytes()).decode("ascii")
    return sources


def render_init_data(sources: dict[str, str], keys: tuple[str, ...] = tuple(INIT_DATA_FILES)) -> str:
    """The init-data TOML (spec version 0.1.0): each file verbatim as a multi-line literal."""
    parts = [f'algorithm = "{INIT_DATA_ALGORITHM}"\nversion = "0.1.0"\n\n[data]\n']
    for key in keys:
        # A newline right after ''' is trimmed by TOML, so the value is the file's exact text.
        parts.append(f"\"{key}\" = '''\n{sources[key]}'''\n")
    return "\n".join(parts)


def encode_annotation(init_data: str) -> str:
    """base64(gzip(init-data)), gzip with a fixed mtime so the output is reproducible."""
    return base64.b64encode(gzip.compress(init_data.encode("utf-8"), compresslevel=9, mtime=0)).decode("ascii")


def _labels(app: str = APP) -> dict[str, str]:
    return {"app.kubernetes.io/name": app, "app.kubernetes.io/part-of": "attestfl"}


def render_documents(platform: str, sources: dict[str, str], image: str) -> list[dict[str, Any]]:
    init_data = render_init_data(sources)
    return [
        _namespace(),
        _config_map(sources),
        _init_data_map(init_data),
        _statefulset(platform, init_data, _container(image)),
        *_services(),
        _network_policy(),
    ]


def _security_context() -> dict[str, Any]:
    return {
        "runAsNonRoot": True,
        "runAsUser": UID,
        "runAsGroup": UID,
        "allowPrivilegeEscalation": False,
        "readOnlyRootFilesystem": True,
        "privileged": False,
        "capabilities": {"drop": ["ALL"]},
        "seccompProfile": {"type": "RuntimeDefault"},
    }


def _container(image: str, config: str = "/etc/attestfl/aggregator.toml") -> dict[str, Any]:
    """The aggregator container: non-root, read-only, no capabilities, gRPC health probes."""
    security_context = _security_context()
    probe = {"grpc": {"port": GRPC_PORT}, "periodSeconds": 10, "timeoutSeconds": 3}
    return {
        "name": "aggregator",
        "image": image,
        "imagePullPolicy": "IfNotPresent",
        "args": ["serve", "--config", config],
        # Only gRPC leaves the pod. Prometheus metrics (unauthenticated) stay on the guest's
        # loopback (metrics_listen = "127.0.0.1:9464"): no containerPort, Service port or
        # NetworkPolicy rule for them; scrape them from inside the pod (README.md).
        "ports": [{"name": "grpc", "containerPort": GRPC_PORT, "protocol": "TCP"}],
        "env": [{"name": "NUMBA_CACHE_DIR", "value": "/tmp/numba"}],
        # In Kata the pod's limits size the confidential VM (plus the runtime's default overhead).
        "resources": {
            "requests": {"cpu": "2", "memory": "4Gi", "ephemeral-storage": "256Mi"},
            "limits": {"cpu": "4", "memory": "8Gi", "ephemeral-storage": "1Gi"},
        },
        "securityContext": security_context,
        "startupProbe": {**probe, "failureThreshold": 30},
        "readinessProbe": probe,
        "livenessProbe": {**probe, "failureThreshold": 3},
        "volumeMounts": [
            {"name": "config", "mountPath": "/etc/attestfl", "readOnly": True},
            {"name": "data", "mountPath": "/var/lib/attestfl"},
            {"name": "tmp", "mountPath": "/tmp"},
        ],
    }


def _namespace() -> dict[str, Any]:
    return {
        "apiVersion": "v1",
        "kind": "Namespace",
        "metadata": {
            "name": NAMESPACE,
            "labels": {
                "pod-security.kubernetes.io/enforce": "restricted",
                "pod-security.kubernetes.io/enforce-version": "latest",
            },
        },
    }


def _config_map(sources: dict[str, str], app: str = APP, keys: tuple[str, ...] = CONFIGMAP_KEYS) -> dict[str, Any]:
    return {
        "apiVersion": "v1",
        "kind": "ConfigMap",
        "metadata": {"name": f"{app}-config", "namespace": NAMESPACE, "labels": _labels(app)},
        "immutable": True,
        "data": {key: sources[key] for key in keys},
        "binaryData": {MODEL_FILE: sources[MODEL_FILE]},
    }


def _init_data_map(init_data: str, app: str = APP) -> dict[str, Any]:
    return {
        "apiVersion": "v1",
        "kind": "ConfigMap",
        "metadata": {"name": f"{app}-initdata", "namespace": NAMESPACE, "labels": _labels(app)},
        "immutable": True,
        # For sites and auditors: the exact init-data whose digest is in HOST_DATA / MRCONFIGID.
        "data": {"initdata.toml": init_data},
    }


def _statefulset(
    platform: str,
    init_data: str,
    container: dict[str, Any],
    app: str = APP,
    replicas: int = 1,
    init_containers: list[dict[str, Any]] | None = None,
) -> dict[str, Any]:
    """``replicas`` pods in the platform's confidential runtime class, carrying the init-data."""
    return {
        "apiVersion": "apps/v1",
        "kind": "StatefulSet",
        "metadata": {"name": app, "namespace": NAMESPACE, "labels": _labels(app)},
        "spec": {
            "serviceName": f"{app}-headless",
            "replicas": replicas,
            "selector": {"matchLabels": _labels(app)},
            "template": {
                "metadata": {
                    "labels": _labels(app),
                    "annotations": {
                        INIT_DATA_ANNOTATION: encode_annotation(init_data),
                        "attestfl.io/initdata-sha256": hashlib.sha256(init_data.encode()).hexdigest(),
                    },
                },
                "spec": {
                    "runtimeClassName": RUNTIME_CLASSES[platform],
                    "automountServiceAccountToken": False,
                    "enableServiceLinks": False,
                    "terminationGracePeriodSeconds": 30,
                    "securityContext": {
                        "runAsNonRoot": True,
                        "runAsUser": UID,
                        "runAsGroup": UID,
                        "fsGroup": UID,
                        "seccompProfile": {"type": "RuntimeDefault"},
                    },
                    **({"initContainers": init_containers} if init_containers else {}),
                    "containers": [container],
                    "volumes": [
                        {"name": "config", "configMap": {"name": f"{app}-config", "defaultMode": 0o444}},
                        {"name": "tmp", "emptyDir": {"medium": "Memory", "sizeLimit": "256Mi"}},
                    ],
                },
            },
            # The audit log and the sealed checkpoints (sealed inside the TEE; the disk is untrusted).
            "volumeClaimTemplates": [
                {
                    "metadata": {"name": "data", "labels": _labels(app)},
                    "spec": {"accessModes": ["ReadWriteOnce"], "resources": {"requests": {"storage": "20Gi"}}},
                }
            ],
        },
    }


def _services(app: str = APP) -> list[dict[str, Any]]:
    """The gRPC Service and the StatefulSet's headless Service."""
    ports = [{"name": "grpc", "port": GRPC_PORT, "targetPort": "grpc", "protocol": "TCP", "appProtocol": "grpc"}]
    service = {
        "apiVersion": "v1",
        "kind": "Service",
        "metadata": {"name": app, "namespace": NAMESPACE, "labels": _labels(app)},
        # TLS terminates inside the TEE: expose with a TCP load balancer or TLS passthrough only.
        "spec": {"type": "ClusterIP", "selector": _labels(app), "ports": ports},
    }
    headless = {
        "apiVersion": "v1",
        "kind": "Service",
        "metadata": {"name": f"{app}-headless", "namespace": NAMESPACE, "labels": _labels(app)},
        "spec": {"clusterIP": "None", "selector": _labels(app), "ports": ports},
    }
    return [service, headless]


def _network_policy(app: str = APP) -> dict[str, Any]:
    """Ingress to the gRPC port only."""
    return {
        "apiVersion": "networking.k8s.io/v1",
        "kind": "NetworkPolicy",
        "metadata": {"name": app, "namespace": NAMESPACE, "labels": _labels(app)},
        "spec": {
            "podSelector": {"matchLabels": _labels(app)},
            "policyTypes": ["Ingress"],
            "ingress": [{"ports": [{"port": GRPC_PORT, "protocol": "TCP"}]}],
        },
    }


class _Dumper(yaml.SafeDumper):
    pass


def _str_presenter(dumper: yaml.SafeDumper, value: str) -> yaml.Node:
    style = "|" if "\n" in value else None
    return dumper.represent_scalar("tag:yaml.org,2002:str", value, style=style)


_Dumper.add_representer(str, _str_presenter)


def render_yaml(platform: str, sources: dict[str, str], image: str) -> str:
    header = (
        f"# attestfl aggregator on Confidential Containers ({RUNTIME_CLASSES[platform]}).\n"
        "# GENERATED by deploy/kubernetes/render.py from deploy/kubernetes/config/: do not edit.\n"
    )
    body = yaml.dump_all(render_documents(platform, sources, image), Dumper=_Dumper, sort_keys=False, width=120)
    return header + "---\n" + body


def rendered_files(image: str = DEFAULT_IMAGE, config: Path = CONFIG, hierarchy: Path | None = None) -> dict[Path, str]:
    sources = read_sources(config)
    files = {HERE / "initdata.toml": render_init_data(sources)}
    for platform in RUNTIME_CLASSES:
        files[HERE / platform / "aggregator.yaml"] = render_yaml(platform, sources, image)
    files.update(rendered_hierarchy(image, config, hierarchy or HIERARCHY_CONFIG))
    return files


# ---- a hierarchical federation: one root, a StatefulSet of leaves (docs/hierarchy.md) ------------

HIERARCHY = HERE / "hierarchy"
HIERARCHY_CONFIG = HIERARCHY / "config"
ROOT_APP = "attestfl-root"
LEAF_APP = "attestfl-leaf"
#: The leaves' StatefulSet replicas: pod attestfl-leaf-<i> serves config/attestfl-leaf-<i>.toml.
LEAVES = 3
ROOT_INIT_DATA_KEYS = ("aggregator.toml", "policy.toml", "policy.rego")
#: In hierarchy/config/root-policy.toml: replaced by the root's init-data digest (HOST_DATA, MRCONFIGID).
ROOT_DIGEST_MARKERS = ("@ROOT_HOST_DATA@", "@ROOT_MR_CONFIG_ID@")


def leaf_config_key(ordinal: int) -> str:
    return f"{LEAF_APP}-{ordinal}.toml"


def init_data_digests(init_data: str) -> tuple[str, str]:
    """(SNP HOST_DATA, TDX MRCONFIGID) of an init-data (algorithm sha384), hex."""
    digest = hashlib.sha384(init_data.encode("utf-8")).digest()
    return digest[:32].hex(), digest.hex()


def read_hierarchy_sources(
    config: Path = CONFIG, hierarchy: Path = HIERARCHY_CONFIG
) -> tuple[dict[str, str], dict[str, str]]:
    """The root's and the leaves' files. The leaves' ``root-policy.toml`` gets the digest of the
    root's init-data: a leaf forwards only to a root launched with exactly that configuration."""
    shared = read_sources(config)
    common = {key: shared[key] for key in ("policy.toml", "policy.rego", MODEL_FILE)}
    root = {"aggregator.toml": _source_text(hierarchy / "root.toml"), **common}
    host_data, mr_config_id = init_data_digests(render_init_data(root, ROOT_INIT_DATA_KEYS))
    policy = _source_text(hierarchy / "root-policy.toml")
    for marker, value in zip(ROOT_DIGEST_MARKERS, (host_data, mr_config_id), strict=True):
        if marker not in policy:
            raise RenderError(f"root-policy.toml: no {marker} to replace with the root's init-data digest")
        policy = policy.replace(marker, value)
    leaves = {leaf_config_key(i): _source_text(hierarchy / leaf_config_key(i)) for i in range(LEAVES)}
    leaves.update(common, **{"root-policy.toml": policy})
    return root, leaves


def leaves_init_data_keys() -> tuple[str, ...]:
    return (*(leaf_config_key(i) for i in range(LEAVES)), "policy.toml", "root-policy.toml", "policy.rego")


def _pod_name_env() -> list[dict[str, Any]]:
    return [{"name": "POD_NAME", "valueFrom": {"fieldRef": {"fieldPath": "metadata.name"}}}]


def render_root_documents(platform: str, root: dict[str, str], image: str) -> list[dict[str, Any]]:
    init_data = render_init_data(root, ROOT_INIT_DATA_KEYS)
    return [
        _namespace(),
        _config_map(root, ROOT_APP),
        _init_data_map(init_data, ROOT_APP),
        _statefulset(platform, init_data, _container(image), ROOT_APP),
        *_services(ROOT_APP),
        _network_policy(ROOT_APP),
    ]


def render_leaves_documents(platform: str, leaves: dict[str, str], image: str) -> list[dict[str, Any]]:
    """A StatefulSet of LEAVES leaves: pod attestfl-leaf-<i> serves /etc/attestfl/attestfl-leaf-<i>.toml
    (all the leaves' files are in the one init-data); an init container enrols its identity key
    toward the root once (``attestfl leaf enroll --keep`` prints it on every start)."""
    keys = leaves_init_data_keys()
    init_data = render_init_data(leaves, keys)
    config = "/etc/attestfl/$(POD_NAME).toml"
    container = _container(image, config)
    container["env"] = _pod_name_env() + container["env"]
    enroll = {
        "name": "enroll",
        "image": image,
        "imagePullPolicy": "IfNotPresent",
        "args": ["leaf", "enroll", "--config", config, "--keep"],
        "env": copy.deepcopy(container["env"]),
        "resources": {
            "requests": {"cpu": "100m", "memory": "256Mi"},
            "limits": {"cpu": "1", "memory": "512Mi"},
        },
        "securityContext": _security_context(),
        "volumeMounts": copy.deepcopy(container["volumeMounts"]),
    }
    statefulset = _statefulset(platform, init_data, container, LEAF_APP, LEAVES, [enroll])
    statefulset["spec"]["podManagementPolicy"] = "Parallel"
    return [
        _namespace(),
        _config_map(leaves, LEAF_APP, tuple(k for k in keys if k != "policy.rego")),
        _init_data_map(init_data, LEAF_APP),
        statefulset,
        *_services(LEAF_APP),
        _network_policy(LEAF_APP),
    ]


def _dump(title: str, docs: list[dict[str, Any]]) -> str:
    header = f"# {title}\n# GENERATED by deploy/kubernetes/render.py from deploy/kubernetes/: do not edit.\n"
    return header + "---\n" + yaml.dump_all(docs, Dumper=_Dumper, sort_keys=False, width=120)


def rendered_hierarchy(image: str, config: Path, hierarchy: Path) -> dict[Path, str]:
    root, leaves = read_hierarchy_sources(config, hierarchy)
    files = {
        HIERARCHY / "root-initdata.toml": render_init_data(root, ROOT_INIT_DATA_KEYS),
        HIERARCHY / "leaves-initdata.toml": render_init_data(leaves, leaves_init_data_keys()),
    }
    for platform, runtime_class in RUNTIME_CLASSES.items():
        files[HIERARCHY / platform / "root.yaml"] = _dump(
            f"attestfl root aggregator of a hierarchical federation on Confidential Containers ({runtime_class}).",
            render_root_documents(platform, root, image),
        )
        files[HIERARCHY / platform / "leaves.yaml"] = _dump(
            f"attestfl leaf aggregators (StatefulSet) of a hierarchical federation ({runtime_class}).",
            render_leaves_documents(platform, leaves, image),
        )
    return files


def digests_snippet(init_data: str) -> str:
    from attestation.platforms.snp import NAME as SNP
    from attestation.platforms.tdx import NAME as TDX
    from attestation.reference_values import init_data_digest

    data = init_data.encode("utf-8")
    return (
        "# init-data digest as it appears in the attestation report (pin it in the site's policy)\n"
        f'[sev-snp]\nhost_data = ["{init_data_digest(data, SNP).hex()}"]\n\n'
        f'[tdx]\nmr_config_id = ["{init_data_digest(data, TDX).hex()}"]\n'
    )


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--image", default=DEFAULT_IMAGE, help="aggregator image, by digest")
    group = parser.add_mutually_exclusive_group()
    group.add_argument("--check", action="store_true", help="exit 1 if a rendered file differs from the committed one")
    group.add_argument("--digests", action="store_true", help="print the HOST_DATA / MRCONFIGID policy snippet")
    args = parser.parse_args(argv)
    try:
        files = rendered_files(args.image)
    except (OSError, UnicodeDecodeError, RenderError) as exc:
        print(f"render.py: error: {exc}", file=sys.stderr)
        return 2
    if args.digests:
        print(digests_snippet(files[HERE / "initdata.toml"]), end="")
        return 0
    stale = [path for path, text in files.items() if not path.is_file() or path.read_text(encoding="utf-8") != text]
    if args.check:
        for path in stale:
            print(f"render.py: {path.relative_to(HERE)} is stale; run deploy/kubernetes/render.py", file=sys.stderr)
        return 1 if stale else 0
    for path, text in files.items():
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(text, encoding="utf-8")
        print(f"wrote {path.relative_to(HERE)}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
