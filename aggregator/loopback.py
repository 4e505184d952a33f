"""A local deployment on loopback for the demo, benchmarks and tests: a simulated TEE vendor,
an ``aggregator.toml``, ``attestfl serve`` in its own process (as operators run it), and the
site policy that trusts the same simulated vendor roots. Never for production: it trusts a
simulated root."""
from __future__ import annotations

import json
import os
import select
import subprocess
import sys
import textwrap
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Iterator

import numpy as np

from aggregator.update import encode_tensors
from attestation.policy import Policy
from enclave.measure import measure
from enclave.simulated.pki import load_or_create

PLATFORMS = 'platforms = ["sev-snp", "tdx"]'


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
        if self.process.poll() is None:
            self.process.terminate()
            try:
                self.process.wait(timeout=20)
            except subprocess.TimeoutExpired:
                self.process.kill()
                self.process.wait()


@dataclass
class Deployment:
    directory: Path
    sim_dir: Path
    model: dict[str, np.ndarray] = field(repr=False)
    sites: dict[str, str] = field(default_factory=dict)  # site id -> extra TOML lines of its admission table
    task: str = ""
    aggregator_extra: str = ""
    listen: str = "127.0.0.1:0"

    @property
    def roots(self) -> dict[str, str]:
        return load_or_create(self.sim_dir).trusted_root_fingerprints()

    def site_policy(self, **kwargs: Any) -> Policy:
        return Policy(trusted_simulated_roots=frozenset(self.roots.values()), **kwargs)

    def write(self) -> Path:
        (self.directory / "model.safetensors").write_bytes(encode_tensors(self.model))
        roots = ", ".join(f'"{fp}"' for fp in self.roots.values())
        (self.directory / "site-policy.toml").write_text(f"trusted_simulated_roots = [{roots}]\n")
        sites = "".join(
            f'\n[admission.sites.{site}]\n{extra if "platforms" in extra else chr(10).join([PLATFORMS, extra])}\n'
            for site, extra in self.sites.items()
        )
        config = textwrap.dedent(f"""\
            [aggregator]
            listen = "{self.listen}"
            tee = "simulated-snp"
            simulated_dir = "{self.sim_dir}"
            log_dir = "audit-log"
            {self.aggregator_extra}

            [admission]
            challenge_ttl = "30s"
            policy = "site-policy.toml"
            """) + sites + textwrap.dedent(f"""
            [task]
            initial_model = "model.safetensors"
            {self.task or 'rounds = 2'}
            """)
        path = self.directory / "aggregator.toml"
        path.write_text(config)
        return path

    def measurement(self) -> bytes:
        return measure((self.directory / "aggregator.toml").read_bytes()).digest

    def start(self, timeout: float = 120.0) -> Aggregator:
        config = self.write()
        stderr_path = self.directory / "aggregator.stderr"
        stderr = stderr_path.open("wb")
        env = dict(os.environ, PYTHONUNBUFFERED="1")
        process = subprocess.Popen([sys.executable, "-m", "aggregator.cli", "serve", "--config", str(config)],
                                   stdout=subprocess.PIPE, stderr=stderr, cwd=self.directory, env=env)
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
        process.kill()
        raise AssertionError(f"aggregator did not start: {stderr_path.read_text()[-3000:]}")


def run_aggregator(deployment: Deployment) -> Iterator[Aggregator]:
    aggregator = deployment.start()
    try:
        yield aggregator
    finally:
        aggregator.stop()
