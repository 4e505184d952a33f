"""``attestfl serve --config aggregator.toml``: the aggregator process.

On start, inside the TEE, it creates the enclave keys, opens the attester (hardware or
simulated), builds the admission policy and the round driver, and serves gRPC with the
health service. It prints one JSON line on stdout when ready (listen address, port,
enclave public keys, and for the simulated TEE the measurement and root fingerprints), logs
structured JSON lines on stderr, and exposes Prometheus metrics when configured.
"""

from __future__ import annotations

import asyncio
import json
import logging
import signal
import sys
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import grpc

from aggregator.audit.events import AuditLog
from aggregator.checkpoint import Checkpoint, load_checkpoint, now_iso, prepare_checkpoint
from aggregator.config import AggregatorConfig
from aggregator.delivery import start_delivery
from aggregator.gate import Limits
from aggregator.rounds import RoundDriver, make_driver
from aggregator.service import SERVER_OPTIONS, EventSink, FederationService, LogEvents, ServerStopping, handlers
from enclave.attester import Attester, GpuAttester, open_attester
from enclave.gpu import open_gpu_attester
from enclave.keys import EnclaveKeys
from enclave.sealing import SealingKeySource, sealing_key_for, simulated_launch_measurement
from protocol.tensors import decode_tensors

LOG = logging.getLogger("attestfl.aggregator")


class JsonLogFormatter(logging.Formatter):
    """One JSON object per line: time, level, logger, message and the event's fields."""

    def format(self, record: logging.LogRecord) -> str:
        entry: dict[str, Any] = {
            "time": self.formatTime(record, "%Y-%m-%dT%H:%M:%S") + f".{int(record.msecs):03d}Z",
            "level": record.levelname.lower(),
            "logger": record.name,
            "message": record.getMessage(),
        }
        fields = getattr(record, "fields", None)
        if isinstance(fields, dict):
            entry.update({k: v for k, v in fields.items() if not isinstance(v, (bytes, bytearray))})
        return json.dumps(entry, default=str)


def configure_logging(level: int = logging.INFO) -> None:
    formatter = JsonLogFormatter()
    formatter.converter = time.gmtime
    handler = logging.StreamHandler(sys.stderr)
    handler.setFormatter(formatter)
    root = logging.getLogger("attestfl")
    root.handlers[:] = [handler]
    root.setLevel(level)
    root.propagate = False


def make_attester(config: AggregatorConfig) -> Attester:
    from enclave.interface import NoTeeError
    from protocol.config import no_tee_error

    try:
        return _open_attester(config)
    except NoTeeError as exc:
        raise no_tee_error(config.path, "aggregator", config.tee, exc) from None


def _open_attester(config: AggregatorConfig) -> Attester:
    # In the simulated TEE the measurement covers the code and this configuration with every
    # file it names (admission policy, initial model): enclave.config_bundle.
    from enclave.config_bundle import config_bundle

    return open_attester(
        config.tee,
        simulated_dir=config.simulated_dir,
        config=config_bundle(config.path).data if config.tee.startswith("simulated") else None,
    )


def make_sealing(config: AggregatorConfig, attester: Attester) -> SealingKeySource | None:
    """The checkpoint sealing key source for this TEE (None: TDX hardware, no local sealing key)."""
    return sealing_key_for(attester, config.simulated_dir)


@dataclass
class Running:
    service: FederationService
    driver: RoundDriver
    port: int
    server: Any
    audit: AuditLog | None = None


def task_record(config: AggregatorConfig) -> dict[str, Any]:
    task = config.task
    dp = task.dp
    return {
        "rounds": task.rounds,
        "min_sites": task.min_sites,
        "round_deadline_s": task.round_deadline,
        "strategy": task.strategy.describe(),
        "clip_norm": task.clip_norm,
        "evaluate": task.evaluate,
        **(
            {"mode": task.mode, "buffer_size": task.buffer_size, "max_staleness": task.max_staleness}
            if task.mode == "async"
            else {}
        ),
        **({"vendors": task.vendors.describe()} if task.vendors is not None else {}),
        "cards": {"share_with_sites": task.cards.share_with_sites if task.cards is not None else True},
        "dp": None
        if dp is None
        else {"clip_norm": dp.clip_norm, "noise_multiplier": dp.noise_multiplier, "delta": dp.delta},
    }


def open_audit_log(
    config: AggregatorConfig, keys: EnclaveKeys, attester: Attester, gpu: GpuAttester | None
) -> AuditLog:
    """The tamper-evident log in ``log_dir``: this run's evidence and configuration first."""
    audit = AuditLog(config.log_dir, keys, forward=LogEvents())
    try:
        audit.begin(
            attester,
            gpu=gpu,
            tee=config.tee,
            config_raw=config.raw,
            admission=config.admission,
            task=task_record(config),
        )
    except BaseException:
        audit.close()
        raise
    return audit


def bind(config: AggregatorConfig) -> tuple[grpc.aio.Server, int]:
    """The gRPC server bound to ``listen``, before anything else happens: a port in use or an
    address that cannot be bound stops the start before the audit log is touched."""
    server = grpc.aio.server(options=SERVER_OPTIONS)
    try:
        port = server.add_insecure_port(config.listen)
    except RuntimeError as exc:  # grpc raises RuntimeError("Failed to bind ...")
        raise OSError(
            f"[aggregator] listen = {config.listen!r}: cannot listen there (in use, or not an address of this "
            f"machine): {exc}"
        ) from None
    if port == 0:
        raise OSError(
            f"[aggregator] listen = {config.listen!r}: cannot listen there (in use, or not an address of this machine)"
        )
    return server, port


class TreeHeads:
    """The audit log's current signed tree head (CBOR) and the RFC 9162 consistency proof from
    the size of the head a site kept (O(log n) from the log's stored subtree hashes)."""

    def __init__(self, audit: AuditLog) -> None:
        self.audit = audit

    def __call__(self, known: int) -> tuple[bytes, list[bytes]]:
        head = self.audit.last_head
        if head is None:
            return b"", []
        if not 0 < known < head.tree_size:
            return head.to_bytes(), []
        return head.to_bytes(), self.audit.consistency_proof(known, head.tree_size)


#: ``driver_factory(config, attester, **options)``: the round driver of a :func:`start`, instead of
#: :func:`~aggregator.rounds.make_driver` (a leaf of a hierarchical federation: attestfl/hierarchy.py).
DriverFactory = Callable[..., RoundDriver]


async def start(
    config: AggregatorConfig, events: EventSink | None = None, *, driver_factory: DriverFactory | None = None
) -> Running:
    server, port = bind(config)
    keys = EnclaveKeys()
    attester = make_attester(config)
    gpu = open_gpu_attester(config.gpu, simulated_dir=config.simulated_dir)
    audit = None
    if events is None:
        audit = open_audit_log(config, keys, attester, gpu)
        events = audit
    try:
        return await _start(config, keys, attester, gpu, events, audit, server, port, driver_factory)
    except BaseException:
        if audit is not None:
            audit.close()
        raise


async def _start(
    config: AggregatorConfig,
    keys: EnclaveKeys,
    attester: Attester,
    gpu: GpuAttester | None,
    events: EventSink,
    audit: AuditLog | None,
    server: grpc.aio.Server,
    port: int,
    driver_factory: DriverFactory | None = None,
) -> Running:
    sessions: dict[bytes, Any] = {}
    sealing = make_sealing(config, attester)
    checkpoint = load_checkpoint(config.state_dir, sealing) if sealing is not None else None
    model = None
    if checkpoint is not None:
        model = decode_tensors(checkpoint.model, config.task.spec)[0]  # views: the driver copies them into its own

    def seal_next(
        next_round: int, dp_rounds: int, model: bytes | bytearray, model_sha256: Callable[[], bytes] | None = None
    ) -> Callable[[], Any]:
        assert sealing is not None
        intelligence = getattr(driver, "intelligence_state", None)  # drift and contribution state (issue 17)
        state = intelligence() if intelligence is not None else None
        return prepare_checkpoint(
            config.state_dir, sealing, Checkpoint(next_round, dp_rounds, model, now_iso(), state, model_sha256)
        )

    options: dict[str, Any] = dict(
        events=events,
        live_sites=lambda: len(sessions),
        start_round=checkpoint.round if checkpoint else 1,
        model=model,
        epsilon_rounds=checkpoint.dp_rounds if checkpoint else 0,
        checkpoint=seal_next if sealing is not None else None,
    )
    if driver_factory is not None:
        driver = driver_factory(config, attester, **options)
    else:
        driver = make_driver(config.task, **options)
    if checkpoint is not None and checkpoint.intelligence is not None and hasattr(driver, "restore_intelligence"):
        driver.restore_intelligence(checkpoint.intelligence)  # surveillance and contributor value go on
    if checkpoint is not None:
        events.record(
            "restart",
            resumed_round=checkpoint.round,
            checkpoint_model_sha256=checkpoint.model_sha256,
            checkpoint_created=checkpoint.created,
            sealing=sealing.name if sealing else None,
        )
    elif sealing is None:
        events.record(
            "no_sealing",
            reason="this TEE has no local sealing key: a restart starts training afresh (use a key broker)",
        )
    service = FederationService(
        keys=keys,
        attester=attester,
        gpu=gpu,
        admission=config.admission,
        driver=driver,
        events=events,
        stall_timeout=config.stall_timeout,
        tree_head=TreeHeads(audit) if audit is not None else None,
        limits=Limits(
            upload_memory_bytes=config.upload_memory_bytes,
            handshake_rate_per_ip=config.handshake_rate_per_ip,
            handshake_burst_per_ip=config.handshake_burst_per_ip,
        ),
    )
    service.spool_dir = config.spool_dir
    if config.spool_dir is not None:
        config.spool_dir.mkdir(mode=0o700, parents=True, exist_ok=True)
    service.sessions = sessions
    from aggregator import card_calls  # dataset cards: PublishCard, ListCards

    service.card_calls = card_calls
    if config.task.vendors is not None:
        from aggregator.evaluation_jobs import EvaluationJobs

        report_dir = config.path.parent / config.task.vendors.report_dir
        from aggregator.vendor_state import VendorStore

        store = VendorStore(config.state_dir / "vendor-jobs", sealing) if sealing is not None else None
        service.vendor_jobs = EvaluationJobs(config.task.vendors, keys, service._record, report_dir, store)
        service.vendor_jobs.restore()  # jobs sealed by an earlier run (logged: vendor_restored)
        service.vendor_jobs.start()  # the report deadline, if the policy sets one
    resumed = (checkpoint.model, checkpoint.digest()) if checkpoint is not None else None
    service.delivery = start_delivery(config, driver, events, resumed)  # the resumed model: not hashed again
    config.task.release_initial_model()  # the driver holds the model now: one copy in memory, not two
    server.add_generic_rpc_handlers(handlers(service))
    await server.start()
    return Running(service, driver, port, server, audit)


def ready_line(config: AggregatorConfig, running: Running) -> dict[str, Any]:
    keys = running.service.keys.public
    info: dict[str, Any] = {
        "ready": True,
        "listen": config.listen,
        "port": running.port,
        "tee": config.tee,
        "x25519": keys.x25519.hex(),
        "ed25519": keys.ed25519.hex(),
    }
    attester = running.service.attester
    measurement = simulated_launch_measurement(attester)
    if measurement is not None:
        info["measurement"] = measurement.hex()
    pki = getattr(attester, "pki", None)
    if pki is not None:
        info["simulated_roots"] = pki.trusted_root_fingerprints()
    return info


#: Exit status of ``attestfl serve`` when it stopped on a fault (fail-stop).
EXIT_FAULT = 3
SUPPRESSED_FLUSH_SECONDS = 10.0


async def serve(
    config: AggregatorConfig,
    *,
    progress: str = "table",
    exit_when_finished: bool = False,
    dashboard: str | None = None,
    driver_factory: DriverFactory | None = None,
) -> int:
    """Serve until SIGTERM/SIGINT (exit 0), the end of training with ``exit_when_finished``
    (exit 0), or a fault that stops the aggregator (exit 3). ``progress``: the round table on
    stdout (:mod:`aggregator.progress`); ``dashboard``: HOST:PORT of a read-only live page."""
    from aggregator.progress import RoundTable

    # A file-size limit (RLIMIT_FSIZE) must fail a write with EFBIG, which fails stop like a
    # full disk, rather than kill the process in the middle of an append.
    signal.signal(signal.SIGXFSZ, signal.SIG_IGN)
    running = await start(config, driver_factory=driver_factory)
    if config.metrics_listen:
        from aggregator.metrics import start_metrics_server

        start_metrics_server(config.metrics_listen, running.service, running.driver)
    if dashboard:  # attestfl serve --dashboard HOST:PORT (aggregator/dashboard.py)
        from aggregator.dashboard import start_dashboard

        start_dashboard(dashboard, running.driver)
    print(json.dumps(ready_line(config, running)), flush=True)
    LOG.info("serving", extra={"fields": {"port": running.port, "tee": config.tee}})
    table = RoundTable(running.driver, sys.stdout, progress)
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, stop.set)

    def stop_serving(reason: str) -> None:  # a fault: stop serving (from any thread)
        loop.call_soon_threadsafe(stop.set)

    running.service.on_stop = stop_serving
    service = running.service
    flushed = time.monotonic()
    while not stop.is_set():
        try:
            # A deadline may close the round: aggregation and fsync run off the event loop.
            await loop.run_in_executor(None, running.driver.tick)
            service.wake_task_waiters()  # a deadline may have moved the task on
            if time.monotonic() - flushed > SUPPRESSED_FLUSH_SECONDS:
                flushed = time.monotonic()
                suppressed = service.gate.drain_suppressed()
                if suppressed:
                    top = dict(sorted(suppressed.items(), key=lambda item: -item[1])[:64])
                    service.events.record(
                        "refusals_suppressed",
                        total=sum(suppressed.values()),
                        peers=len(suppressed),
                        by_peer=top,
                        seconds=SUPPRESSED_FLUSH_SECONDS,
                    )
        except ServerStopping:
            break  # a deadline's close gave up because the server stops (a leaf): not a fault
        except Exception as exc:  # noqa: BLE001 - a round that cannot be logged or checkpointed: stop, apply nothing
            service.fail_stop(f"{type(exc).__name__}: {exc}")
        table.update()
        if exit_when_finished and table.finished() and service.stopped is None:
            LOG.info("training finished: exiting (--exit-when-finished)")
            stop.set()
        try:
            await asyncio.wait_for(stop.wait(), timeout=0.25)
        except TimeoutError:
            pass
    LOG.info("stopping", extra={"fields": {"fault": service.stopped}})
    service.stopping = True
    service.wake_task_waiters()  # long polls answer now, inside the grace
    stop_driver = getattr(running.driver, "stop", None)  # a leaf waiting for its root gives up now
    if stop_driver is not None:
        stop_driver()
    await running.server.stop(grace=2)
    if running.audit is not None:
        running.audit.close()
    return EXIT_FAULT if service.stopped is not None else 0
