"""A local deployment on loopback for the demo, benchmarks and tests: a simulated TEE vendor,
an ``aggregator.toml``, ``attestfl serve`` in its own process (as operators run it), and the
site policy that trusts the same simulated vendor roots. Never for production: it trusts a
simulated root."""

from __future__ import annotations

import json
import os
import select
import signal
import subprocess
import sys
import textwrap
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from attestation.platforms.nvidia import NAME as GPU
from attestation.platforms.snp import NAME as SNP
from attestation.platforms.snp.validate import SnpPolicy
from attestation.platforms.tdx import NAME as TDX
from attestation.policy import Policy
from enclave.identity import SiteIdentity, enroll
from enclave.measure import measure
from enclave.sealing import SimulatedSealingKey
from enclave.simulated.pki import load_or_create
from protocol.tensors import encode_tensors

PLATFORMS = f"platforms = {json.dumps([SNP, TDX])}"


def site_sealing(sim_dir: Path) -> SimulatedSealingKey:
    """The sealing key of a simulated site TEE running the installed code."""
    load_or_create(sim_dir)  # the simulated vendor's directory, created on first use
    return SimulatedSealingKey(sim_dir, measure().digest)


def read_events(path: Path) -> list[dict[str, Any]]:
    """The aggregator's events from its JSON log lines (stderr of ``attestfl serve``)."""
    events = []
    for line in path.read_text(errors="replace").splitlines() if path.exists() else []:
        try:
            entry = json.loads(line)
        except ValueError:
            continue
        if isinstance(entry, dict) and entry.get("logger") == "attestfl.aggregator":
            events.append(entry)
    return events


@dataclass
class Aggregator:
    process: subprocess.Popen
    ready: dict[str, Any]
    config: Path
    stderr_path: Path

    @property
    def target(self) -> str:
        return f"127.0.0.1:{self.ready['port']}"

    def events(self) -> list[dict[str, Any]]:
        return read_events(self.stderr_path)

    def stop(self) -> None:
        """Stop ``serve`` and whatever runs it (a prefix such as ``faketime`` forks the aggregator
        as its child and does not pass signals on): the whole process group."""
        if self.process.poll() is None:
            _signal_group(self.process, signal.SIGTERM)
            try:
                self.process.wait(timeout=20)
            except subprocess.TimeoutExpired:
                _signal_group(self.process, signal.SIGKILL)
                self.process.wait()
        _signal_group(self.process, signal.SIGKILL)  # a child the prefix left behind


def _signal_group(process: subprocess.Popen, number: int) -> None:
    try:
        os.killpg(process.pid, number)
    except (ProcessLookupError, PermissionError):
        pass


@dataclass
class Deployment:
    directory: Path
    sim_dir: Path
    model: dict[str, np.ndarray] = field(repr=False)
    sites: dict[str, str] = field(default_factory=dict)  # site id -> extra TOML lines of its admission table
    task: str = ""
    aggregator_extra: str = ""
    listen: str = "127.0.0.1:0"
    log_dir: str = "audit-log"
    #: Each site's identity key (in memory; pinned in its admission rule unless the rule pins its own).
    identities: dict[str, SiteIdentity] = field(default_factory=dict, repr=False)

    @property
    def roots(self) -> dict[str, str]:
        return load_or_create(self.sim_dir).trusted_root_fingerprints()

    def identity(self, site_id: str) -> SiteIdentity:
        """The site's identity key (created on first use)."""
        if site_id not in self.identities:
            self.identities[site_id] = SiteIdentity.generate(site_id)
        return self.identities[site_id]

    def sealed_identity(self, site_id: str) -> Path:
        """Enrol ``site_id`` as ``attestfl site enroll`` does (sealed by a simulated TEE running
        this code) and return the sealed file, for site processes to open with
        :func:`site_sealing`. Call before :meth:`start`: the rule pins the enrolled key."""
        path = self.directory / "identities" / f"{site_id}.sealed"
        if not path.exists():
            self.identities[site_id] = enroll(path, site_sealing(self.sim_dir), site_id)
        return path

    def site_policy(self, **kwargs: Any) -> Policy:
        """The sites' policy for this aggregator: the simulated roots and the aggregator's measurement."""
        if "snp" not in kwargs:
            kwargs["snp"] = SnpPolicy(measurement=frozenset({self.measurement()}))
        kwargs.setdefault("platforms", frozenset({SNP, GPU}))
        return Policy(trusted_simulated_roots=frozenset(self.roots.values()), **kwargs)

    def client(
        self, target: str, *, site_id: str, policy: Policy | None = None, attester: Any = None, **options: Any
    ) -> Any:
        """A :class:`fedsite.client.SiteClient` for ``site_id`` with its identity key and the
        sites' policy (the simulated SNP TEE unless ``attester`` or ``app_attest`` is given)."""
        from enclave.simulated.attester import SimulatedSnpAttester
        from fedsite.client import SiteClient

        if attester is None and "app_attest" not in options:
            attester = SimulatedSnpAttester(self.sim_dir)
        return SiteClient(
            target,
            site_id=site_id,
            policy=policy or self.site_policy(),
            attester=attester,
            identity=options.pop("identity", None) or self.identity(site_id),
            **options,
        )

    def rule(self, site: str, extra: str) -> str:
        """The site's admission table: the given lines, its platforms and its identity key."""
        lines = [extra] if extra else []
        if "platforms" not in extra:
            lines.insert(0, PLATFORMS)
        if "identity_keys" not in extra and "organisation_ca" not in extra:
            lines.append(f'identity_keys = ["{self.identity(site).public.hex()}"]')
        if "max_weight" not in extra:
            lines.append("max_weight = 1000000")
        return "\n".join(lines)

    def write(self) -> Path:
        from enclave.simulated.collateral import write_simulated_collateral

        (self.directory / "model.safetensors").write_bytes(encode_tensors(self.model))
        if not (self.directory / "collateral").exists():
            # The verifier's own collateral for the simulated vendor (CRLs, TCB info, QE identity).
            write_simulated_collateral(self.sim_dir, self.directory / "collateral")
        roots = ", ".join(f'"{fp}"' for fp in self.roots.values())
        (self.directory / "site-policy.toml").write_text(f"trusted_simulated_roots = [{roots}]\n")
        sites = "".join(f"\n[admission.sites.{site}]\n{self.rule(site, extra)}\n" for site, extra in self.sites.items())
        config = (
            textwrap.dedent(f"""\
            [aggregator]
            listen = "{self.listen}"
            tee = "simulated-snp"
            simulated_dir = "{self.sim_dir}"
            log_dir = "{self.log_dir}"
            {self.aggregator_extra}

            [admission]
            challenge_ttl = "30s"
            policy = "site-policy.toml"
            collateral_dir = "collateral"
            """)
            + sites
            + textwrap.dedent(f"""
            [task]
            initial_model = "model.safetensors"
            {self.task or "rounds = 2"}
            """)
        )
        path = self.directory / "aggregator.toml"
        path.write_text(config)
        return path

    def measurement(self) -> bytes:
        """The simulated measurement of the aggregator: the code, aggregator.toml and every file it names."""
        from enclave.config_bundle import config_bundle

        path = self.directory / "aggregator.toml"
        return measure(config_bundle(path if path.exists() else self.write()).data).digest

    def start(self, timeout: float = 120.0, prefix: tuple[str, ...] = ()) -> Aggregator:
        """``attestfl serve`` in its own process (``prefix``: a command to run it under, e.g.
        ``("faketime", "-f", "+30s")``); returns once it printed its ready line."""
        config = self.write()
        stderr_path = self.directory / "aggregator.stderr"
        stderr = stderr_path.open("wb")
        env = dict(os.environ, PYTHONUNBUFFERED="1")
        process = subprocess.Popen(
            # --progress none: only the ready line is read from this pipe (a round table would fill it)
            [*prefix, sys.executable, "-m", "attestfl.cli", "serve", "--config", str(config), "--progress", "none"],
            stdout=subprocess.PIPE,
            stderr=stderr,
            cwd=self.directory,
            env=env,
            start_new_session=True,  # its own process group: stop() ends a prefix's child too
        )
        deadline = time.time() + timeout
        assert process.stdout is not None
        while time.time() < deadline:
            ready, _, _ = select.select([process.stdout], [], [], 0.5)
            if ready:
                line = process.stdout.readline()
                if line:
                    return Aggregator(process, json.loads(line), config, stderr_path)
            if process.poll() is not None:
                break
        _signal_group(process, signal.SIGKILL)
        raise AssertionError(f"aggregator did not start: {stderr_path.read_text()[-3000:]}")


def run_aggregator(deployment: Deployment) -> Iterator[Aggregator]:
    aggregator = deployment.start()
    try:
        yield aggregator
    finally:
        aggregator.stop()
