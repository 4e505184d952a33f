"""Offline checks of the deployment files (deploy/): the container lock and Dockerfile, and
the Kubernetes manifests. Each check returns a list of problems (empty: fine), so that the
tests can show both that the shipped files pass and that broken copies are flagged."""

from __future__ import annotations

import re
import shlex
import tomllib
from collections.abc import Iterable
from dataclasses import dataclass
from importlib import metadata
from pathlib import Path
from typing import Any

from packaging.requirements import Requirement
from packaging.utils import canonicalize_name

ROOT = Path(__file__).resolve().parent.parent
DEPLOY = ROOT / "deploy"
FORBIDDEN_PACKAGES = frozenset({"torch", "torchvision", "torchaudio", "tensorflow", "jax"})
RUNTIME_EXTRAS = ("aggregator",)
CONFIDENTIAL_RUNTIME_CLASSES = frozenset({"kata-qemu-snp", "kata-qemu-tdx"})
HEALTH_PORT = 7443
#: Prometheus metrics: unauthenticated, so never exposed outside the pod.
METRICS_PORT = 9464
POD_TEMPLATE_KINDS = frozenset({"Deployment", "StatefulSet", "DaemonSet", "ReplicaSet", "Job"})


# ---- lock ------------------------------------------------------------------------------------


@dataclass(frozen=True)
class LockEntry:
    name: str  # canonical
    specifier: str  # e.g. "==1.2.3"
    hashes: tuple[str, ...]


def parse_lock(text: str) -> dict[str, LockEntry]:
    """Requirement lines of a pip requirements file (continuations joined, comments dropped)."""
    logical: list[str] = []
    current = ""
    for raw in text.splitlines():
        line = raw.split(" #", 1)[0].rstrip() if not raw.lstrip().startswith("#") else ""
        if line.endswith("\\"):
            current += line[:-1] + " "
            continue
        current += line
        if current.strip():
            logical.append(current.strip())
        current = ""
    entries: dict[str, LockEntry] = {}
    for line in logical:
        if line.startswith("-"):
            raise ValueError(f"lock has an option line {line!r}: indexes and links belong to the build, not the lock")
        tokens = line.split()
        requirement = Requirement(tokens[0])
        hashes = tuple(t.removeprefix("--hash=") for t in tokens[1:] if t.startswith("--hash="))
        entries[canonicalize_name(requirement.name)] = LockEntry(
            canonicalize_name(requirement.name), str(requirement.specifier), hashes
        )
    return entries


def runtime_requirements(pyproject_text: str) -> list[Requirement]:
    """``[project] dependencies`` plus the optional extras the aggregator runs with."""
    project = tomllib.loads(pyproject_text)["project"]
    requirements = [Requirement(r) for r in project.get("dependencies", [])]
    for extra in RUNTIME_EXTRAS:
        requirements += [Requirement(r) for r in project.get("optional-dependencies", {}).get(extra, [])]
    return [r for r in requirements if canonicalize_name(r.name) != "attestfl"]


def _applies(requirement: Requirement, extras: Iterable[str]) -> bool:
    if requirement.marker is None:
        return True
    return any(requirement.marker.evaluate({"extra": extra}) for extra in (*extras, ""))


def runtime_closure(requirements: Iterable[Requirement]) -> dict[str, str]:
    """Canonical name -> who needs it, following installed distributions' metadata."""
    needed: dict[str, str] = {}
    queue = [(r, "pyproject.toml") for r in requirements if _applies(r, ())]
    while queue:
        requirement, parent = queue.pop()
        name = canonicalize_name(requirement.name)
        if name in needed:
            continue
        needed[name] = parent
        try:
            requires = metadata.requires(requirement.name) or []
        except metadata.PackageNotFoundError:
            continue  # not installed here: only the direct pin can be checked
        for text in requires:
            child = Requirement(text)
            if _applies(child, requirement.extras):
                queue.append((child, name))
    return needed


def lock_problems(lock_text: str, pyproject_text: str) -> list[str]:
    try:
        lock = parse_lock(lock_text)
    except ValueError as exc:
        return [str(exc)]
    problems = []
    direct = {canonicalize_name(r.name): r for r in runtime_requirements(pyproject_text)}
    needed = runtime_closure(direct.values())
    for name in sorted(set(lock) - set(needed) - FORBIDDEN_PACKAGES):
        problems.append(f"{name} is in the lock but nothing the aggregator runs needs it")
    for name, parent in sorted(needed.items()):
        entry = lock.get(name)
        if entry is None:
            problems.append(f"{name} (needed by {parent}) is not in the lock")
            continue
        if not re.fullmatch(r"==[^,*]+", entry.specifier):
            problems.append(f"{name} is not pinned with == in the lock: {entry.specifier!r}")
        if not any(re.fullmatch(r"sha256:[0-9a-f]{64}", h) for h in entry.hashes):
            problems.append(f"{name} has no --hash=sha256: in the lock")
        if name in direct and entry.specifier.startswith("=="):
            version = entry.specifier[2:]
            if not direct[name].specifier.contains(version, prereleases=True):
                problems.append(f"{name}: lock pins {version}, pyproject.toml wants {direct[name].specifier}")
    for name in sorted(FORBIDDEN_PACKAGES & set(lock)):
        problems.append(f"{name} is in the aggregator lock (the aggregator image must not contain it)")
    return problems


# ---- Dockerfile ------------------------------------------------------------------------------


def dockerfile_instructions(text: str) -> list[tuple[str, str]]:
    """(INSTRUCTION, arguments) with continuation lines joined and comments dropped."""
    out: list[tuple[str, str]] = []
    current = ""
    for raw in text.splitlines():
        if raw.lstrip().startswith("#"):
            continue
        if raw.rstrip().endswith("\\"):
            current += raw.rstrip()[:-1] + " "
            continue
        current += raw
        if current.strip():
            keyword, _, rest = current.strip().partition(" ")
            out.append((keyword.upper(), " ".join(rest.split())))
        current = ""
    return out


def _pip_install_commands(run: str) -> list[list[str]]:
    commands = []
    for part in re.split(r"&&|;|\|\|", run):
        try:
            words = shlex.split(part)
        except ValueError:
            continue
        if "pip" in " ".join(words[:4]) and "install" in words:
            commands.append(words)
    return commands


def dockerfile_problems(text: str, lock_path: str = "deploy/container/requirements.lock") -> list[str]:
    instructions = dockerfile_instructions(text)
    problems = []
    stages = [i for i, (k, _) in enumerate(instructions) if k == "FROM"]
    if not stages:
        return ["no FROM instruction"]
    final = instructions[stages[-1] :]
    installs = [cmd for k, a in instructions if k == "RUN" for cmd in _pip_install_commands(a)]
    for keyword, args in instructions:
        if keyword == "FROM" and re.search(r"torch|tensorflow|jax", args, re.IGNORECASE):
            problems.append(f"base image {args!r}: the aggregator image must not contain a training stack")
    for cmd in installs:
        named = {canonicalize_name(re.split(r"[<>=!~\[;]", w, maxsplit=1)[0]) for w in cmd if not w.startswith("-")}
        for name in sorted(FORBIDDEN_PACKAGES & named):
            problems.append(f"pip installs {name}: the aggregator image must not contain it")
    locked = [c for c in installs if "-r" in c and c[c.index("-r") + 1] == lock_path]
    if not locked:
        problems.append(f"no pip install -r {lock_path}")
    for cmd in locked:
        for flag in ("--require-hashes", "--no-deps"):
            if flag not in cmd:
                problems.append(f"pip install -r {lock_path} without {flag}")
    project = [c for c in installs if any(w in ("/src", ".") or w.endswith(".whl") for w in c)]
    if not project:
        problems.append("the project itself is not installed from the source tree")
    problems += [f"the project is installed without --no-deps: {' '.join(c)}" for c in project if "--no-deps" not in c]
    users = [a for k, a in final if k == "USER"]
    if not users:
        problems.append("the final stage has no USER: it would run as root")
    else:
        user = users[-1].split(":")[0]
        if user in ("root", "0") or not user.isdigit():
            problems.append(f"the final stage runs as USER {users[-1]!r}: use a numeric non-root UID")
    for keyword, args in instructions:
        if keyword == "COPY" and not args.startswith("--from"):
            for source in shlex.split(args)[:-1]:
                if not source.startswith("--") and not (ROOT / source).exists():
                    problems.append(f"COPY source {source} does not exist in the repository")
    return problems


# ---- Kubernetes manifests --------------------------------------------------------------------


def _pod_spec(doc: dict[str, Any]) -> dict[str, Any] | None:
    if doc.get("kind") == "Pod":
        return doc.get("spec") or {}
    if doc.get("kind") in POD_TEMPLATE_KINDS:
        return ((doc.get("spec") or {}).get("template") or {}).get("spec") or {}
    return None


def _quantity_set(value: Any) -> bool:
    return value is not None and str(value).strip() not in ("", "0")


def manifest_problems(docs: Iterable[dict[str, Any]]) -> list[str]:
    """Security settings of every pod template: confidential runtime class, limits, non-root,
    no privilege escalation, read-only root filesystem, capabilities dropped, gRPC probes; and
    the metrics port not exposed (:func:`metrics_exposure_problems`)."""
    docs = list(docs)
    problems = []
    templates = 0
    for doc in docs:
        spec = _pod_spec(doc)
        if spec is None:
            continue
        templates += 1
        where = f"{doc.get('kind')}/{(doc.get('metadata') or {}).get('name')}"
        runtime_class = spec.get("runtimeClassName")
        if runtime_class not in CONFIDENTIAL_RUNTIME_CLASSES:
            problems.append(
                f"{where}: runtimeClassName {runtime_class!r} is not one of {sorted(CONFIDENTIAL_RUNTIME_CLASSES)}"
            )
        if spec.get("hostNetwork") or spec.get("hostPID") or spec.get("hostIPC"):
            problems.append(f"{where}: shares a host namespace")
        if spec.get("automountServiceAccountToken") is not False:
            problems.append(f"{where}: automountServiceAccountToken must be false")
        pod_sc = spec.get("securityContext") or {}
        containers = list(spec.get("containers") or []) + list(spec.get("initContainers") or [])
        if not containers:
            problems.append(f"{where}: no containers")
        for container in containers:
            cw = f"{where} container {container.get('name')}"
            resources = container.get("resources") or {}
            for kind in ("limits", "requests"):
                for resource in ("cpu", "memory"):
                    if not _quantity_set((resources.get(kind) or {}).get(resource)):
                        problems.append(f"{cw}: no resources.{kind}.{resource}")
            sc = {**pod_sc, **(container.get("securityContext") or {})}
            if sc.get("runAsNonRoot") is not True:
                problems.append(f"{cw}: runAsNonRoot is not true")
            if sc.get("runAsUser") in (None, 0):
                problems.append(f"{cw}: runAsUser {sc.get('runAsUser')!r} (must be a non-zero UID)")
            if sc.get("runAsGroup") == 0:
                problems.append(f"{cw}: runAsGroup 0")
            if sc.get("allowPrivilegeEscalation") is not False:
                problems.append(f"{cw}: allowPrivilegeEscalation is not false")
            if sc.get("privileged"):
                problems.append(f"{cw}: privileged")
            if sc.get("readOnlyRootFilesystem") is not True:
                problems.append(f"{cw}: readOnlyRootFilesystem is not true")
            if "ALL" not in ((sc.get("capabilities") or {}).get("drop") or []):
                problems.append(f"{cw}: capabilities do not drop ALL")
            if (sc.get("capabilities") or {}).get("add"):
                problems.append(f"{cw}: adds capabilities")
            if container in (spec.get("initContainers") or []):
                continue
            for probe in ("readinessProbe", "livenessProbe"):
                grpc = (container.get(probe) or {}).get("grpc") or {}
                if grpc.get("port") != HEALTH_PORT:
                    problems.append(f"{cw}: {probe} is not a gRPC health probe on port {HEALTH_PORT}")
    if templates == 0:
        problems.append("no pod template in the manifests")
    return problems + metrics_exposure_problems(docs)


def _aggregator_tomls(doc: dict[str, Any]) -> Iterable[tuple[str, str]]:
    """(where, text) of every aggregator.toml a ConfigMap carries, directly or in init-data."""
    data = doc.get("data") or {}
    # aggregator.toml, and the files of a hierarchy's leaves (attestfl-leaf-<i>.toml): every
    # carried TOML with an [aggregator] table.
    for key, text in data.items():
        if key.endswith(".toml") and key != "initdata.toml" and isinstance(text, str) and _has_aggregator(text):
            yield key, text
    if "initdata.toml" in data:
        try:
            carried = tomllib.loads(data["initdata.toml"]).get("data") or {}
        except tomllib.TOMLDecodeError:
            return
        for key, text in carried.items():
            if key.endswith(".toml") and isinstance(text, str) and _has_aggregator(text):
                yield f"initdata.toml [data] {key}", text


def _has_aggregator(text: str) -> bool:
    """The text is an aggregator.toml (unparsable text counts: the caller reports it)."""
    try:
        return "aggregator" in tomllib.loads(text)
    except tomllib.TOMLDecodeError:
        return True


def metrics_exposure_problems(docs: Iterable[dict[str, Any]]) -> list[str]:
    """The Prometheus endpoint has no authentication: the aggregator.toml a ConfigMap carries
    must bind ``metrics_listen`` to loopback, and no containerPort, hostPort, Service port or
    NetworkPolicy ingress rule may name the metrics port (or a port called "metrics")."""
    from aggregator.config import DEFAULT_METRICS_HOST
    from protocol.config import parse_endpoint

    docs = list(docs)
    problems = []
    ports: set[int | str] = {METRICS_PORT, "metrics"}
    for doc in docs:
        if doc.get("kind") != "ConfigMap":
            continue
        where = f"ConfigMap/{(doc.get('metadata') or {}).get('name')}"
        for name, text in _aggregator_tomls(doc):
            try:
                listen = (tomllib.loads(text).get("aggregator") or {}).get("metrics_listen", "")
            except tomllib.TOMLDecodeError as exc:
                problems.append(f"{where}: {name} is not TOML: {exc}")
                continue
            if not listen:
                continue
            try:
                endpoint = parse_endpoint(str(listen), default_host=DEFAULT_METRICS_HOST)
            except ValueError as exc:
                problems.append(f"{where}: {name} metrics_listen {listen!r}: {exc}")
                continue
            ports.add(endpoint.port)
            if not endpoint.is_loopback:
                problems.append(
                    f"{where}: {name} metrics_listen {listen!r} binds {endpoint.host}, not loopback: "
                    "the metrics endpoint is unauthenticated"
                )
    for doc in docs:
        kind = doc.get("kind")
        where = f"{kind}/{(doc.get('metadata') or {}).get('name')}"
        spec = _pod_spec(doc)
        if spec is not None:
            for container in list(spec.get("containers") or []) + list(spec.get("initContainers") or []):
                for port in container.get("ports") or []:
                    named = {port.get("name"), port.get("containerPort"), port.get("hostPort")} & ports
                    if named:
                        problems.append(
                            f"{where} container {container.get('name')}: exposes the metrics port "
                            f"({', '.join(sorted(map(str, named)))})"
                        )
        elif kind == "Service":
            for port in (doc.get("spec") or {}).get("ports") or []:
                named = {port.get("name"), port.get("port"), port.get("targetPort")} & ports
                if named:
                    problems.append(f"{where}: exposes the metrics port ({', '.join(sorted(map(str, named)))})")
        elif kind == "NetworkPolicy":
            for rule in (doc.get("spec") or {}).get("ingress") or []:
                if not rule.get("ports"):
                    problems.append(
                        f"{where}: an ingress rule without ports admits every port, the metrics port included"
                    )
                for port in rule.get("ports") or []:
                    if port.get("port") in ports:
                        problems.append(f"{where}: admits ingress to the metrics port ({port.get('port')})")
    return problems
