"""``aggregator.toml``: the operator's file.

aggregator.toml::

    [aggregator]
    listen = "0.0.0.0:7443"            # gRPC (plaintext is fine: payloads are sealed end to end);
                                       # host:port, IPv6 in brackets ("[::]:7443"), port 0: any free port
    tee = "auto"                       # auto | sev-snp | tdx | simulated-snp | simulated-tdx
    simulated_dir = "sim-tee"          # the simulated TEE's root of trust (simulated-* only)
    gpu = "none"                       # none | auto (a CC-mode NVIDIA GPU when present) | nvml | simulated
    metrics_listen = "127.0.0.1:9464"  # Prometheus metrics, unauthenticated: keep it on loopback;
                                       # "" (the default) disables, ":9464" binds 127.0.0.1
    log_dir = "audit-log"              # the tamper-evident event log
    state_dir = "state"                # sealed checkpoints
    stall_timeout = "30s"              # an upload that sends nothing for this long is aborted
    upload_memory_bytes = 67108864     # an upload up to this size is received in memory; a larger
                                       # one is sealed to disk in blocks as it arrives (spool_dir)
    spool_dir = "spool"                # where spooled uploads go (unset: the system's temporary directory)
    handshake_rate_per_ip = 20.0       # handshake calls per second from one client address (3 per join);
    handshake_burst_per_ip = 80        # raise both when many sites share one address (a NAT, a proxy)

    [admission]  -> protocol.admission      [task] -> aggregator.rounds
    [parent]     -> attestfl.hierarchy (optional: this aggregator is a leaf of a hierarchical federation)

The rules every file follows (types, bounds, error lines): :mod:`protocol.config`.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Annotated, Any, Literal

import msgspec
from msgspec import Meta

from attestation.errors import PolicyError
from enclave.attester import TEE_CHOICES
from enclave.gpu import GPU_CHOICES
from protocol.admission import AdmissionPolicy

if TYPE_CHECKING:
    from aggregator.rounds import TaskConfig

from protocol.config import (
    ConfigError,
    Duration,
    Endpoint,
    PathText,
    load_toml,
    parse_duration,
    parse_endpoint,
    read_endpoint,
    read_struct,
    value_repr,
)

#: Where a ``metrics_listen`` without a host binds.
DEFAULT_METRICS_HOST = "127.0.0.1"


class AggregatorTable(msgspec.Struct, forbid_unknown_fields=True, frozen=True, kw_only=True):
    """The ``[aggregator]`` table as written (see the module docstring)."""

    listen: Annotated[
        str, Meta(description='host:port, like "0.0.0.0:7443" or "[::]:7443" (port 0: any free port)')
    ] = "127.0.0.1:7443"
    # Literal[...] of a tuple of choices: msgspec validates it, mypy does not accept the form.
    tee: Literal[TEE_CHOICES] = "auto"  # type: ignore[valid-type]
    simulated_dir: PathText | None = None
    gpu: Literal[GPU_CHOICES] = "none"  # type: ignore[valid-type]  # as tee
    metrics_listen: Annotated[str, Meta(description='host:port like "127.0.0.1:9464", or "" (off)')] = ""
    log_dir: PathText = "audit-log"
    state_dir: PathText = "state"
    stall_timeout: Duration = 30
    upload_memory_bytes: Annotated[
        int, Meta(ge=1024 * 1024, le=1 << 40, description="an upload up to this size is received in memory")
    ] = 64 * 1024 * 1024
    spool_dir: PathText | None = None
    handshake_rate_per_ip: Annotated[
        float, Meta(gt=0, le=1e6, description="handshake calls per second from one client address")
    ] = 20.0
    handshake_burst_per_ip: Annotated[
        int, Meta(ge=1, le=1_000_000, description="handshake calls from one client address at once, over the rate")
    ] = 80


_TABLES = ("aggregator", "admission", "task", "parent")


@dataclass(frozen=True)
class AggregatorConfig:
    path: Path
    raw: bytes  # measured into the simulated TEE's launch measurement
    listen: str
    tee: str
    simulated_dir: Path | None
    gpu: str
    metrics_listen: str
    log_dir: Path
    state_dir: Path
    stall_timeout: float
    admission: AdmissionPolicy
    task: TaskConfig
    upload_memory_bytes: int = 64 * 1024 * 1024
    spool_dir: Path | None = None  # None: the system's temporary directory
    handshake_rate_per_ip: float = 20.0
    handshake_burst_per_ip: int = 80
    #: ``[parent]`` as written (read and checked by attestfl.hierarchy), or None: not a leaf.
    parent: dict[str, Any] | None = None

    @property
    def listen_endpoint(self) -> Endpoint:
        """``listen``, parsed (port 0: the system picks one)."""
        return parse_endpoint(self.listen, allow_port_zero=True)

    @property
    def metrics_endpoint(self) -> Endpoint | None:
        """``metrics_listen``, parsed (no host: 127.0.0.1); None when metrics are off."""
        return parse_endpoint(self.metrics_listen, default_host=DEFAULT_METRICS_HOST) if self.metrics_listen else None

    @classmethod
    def load(cls, path: str | Path) -> AggregatorConfig:
        """Read and check the whole file. Nothing is created, bound or started here."""
        from aggregator.rounds import TaskConfig

        path = Path(path).resolve()
        data, raw = load_toml(path)
        base = path.parent
        try:
            unknown = sorted(set(data) - set(_TABLES))
            if unknown:
                raise ConfigError(
                    f"unknown table(s) {', '.join(unknown)}; allowed: {', '.join(f'[{t}]' for t in _TABLES)}"
                )
            for name in _TABLES:
                if not isinstance(data.get(name, {}), dict):
                    raise ConfigError(f"[{name}]: expected a table, got {value_repr(data[name])}")
            section = read_struct(data.get("aggregator", {}), AggregatorTable, "aggregator")
            listen = read_endpoint(section.listen, "aggregator", "listen", allow_port_zero=True)
            if section.metrics_listen:
                metrics = read_endpoint(
                    section.metrics_listen, "aggregator", "metrics_listen", default_host=DEFAULT_METRICS_HOST
                )
                if metrics.port == listen.port and (
                    metrics.host == listen.host or metrics.is_wildcard or listen.is_wildcard
                ):
                    raise ConfigError(
                        f"[aggregator] metrics_listen: port {metrics.port} is the gRPC port of listen; use another port"
                    )
            if section.tee.startswith("simulated") and section.simulated_dir is None:
                raise ConfigError("[aggregator] simulated_dir: required for a simulated TEE (a path)")
            log_dir, state_dir = base / section.log_dir, base / section.state_dir
            if log_dir.resolve() == state_dir.resolve():
                raise ConfigError(
                    f"[aggregator] state_dir: must differ from log_dir, got {value_repr(section.state_dir)}"
                )
            stall = parse_duration(section.stall_timeout, "aggregator", "stall_timeout")
            admission = AdmissionPolicy.from_table(data.get("admission", {}), base)
            task = TaskConfig.from_table(data.get("task", {}), base)
            return cls(
                path=path,
                raw=raw,
                listen=section.listen,
                tee=section.tee,
                simulated_dir=base / section.simulated_dir if section.simulated_dir is not None else None,
                gpu=section.gpu,
                metrics_listen=section.metrics_listen,
                log_dir=log_dir,
                state_dir=state_dir,
                stall_timeout=stall,
                admission=admission,
                task=task,
                upload_memory_bytes=section.upload_memory_bytes,
                handshake_rate_per_ip=section.handshake_rate_per_ip,
                handshake_burst_per_ip=section.handshake_burst_per_ip,
                spool_dir=base / section.spool_dir if section.spool_dir is not None else None,
                parent=data.get("parent"),
            )
        except (PolicyError, ValueError) as exc:  # ConfigError, TaskConfigError, PolicyError
            raise ConfigError(f"{path}: {exc}") from None
