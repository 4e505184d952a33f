"""Hierarchical attested aggregation: a *leaf* aggregator admits its own sites and forwards each
round's sealed partial aggregate to a *root* aggregator, as one site of the root (docs/hierarchy.md).

A leaf is an ordinary ``attestfl serve`` aggregator (its own TEE evidence, admission policy and
audit log) whose ``aggregator.toml`` has a ``[parent]`` table::

    [parent]
    aggregator = "root.example.org:7443"   # the root aggregator (host:port)
    site_id = "leaf-eu"                    # this leaf's name in the root's [admission.sites.<id>]
    policy = "root-policy.toml"            # the leaf's policy for the root's evidence: pins its measurement
    timeout = "30s"                        # one call to the root
    connect_timeout = "10m"                # how long the start waits for the root to answer
    round_timeout = "1h"                   # how long a closed round waits for the root's next model
    allow_not_flat = false                 # accept a [task] a tree does not preserve (docs/hierarchy.md)
    INSECURE_accept_any_aggregator = false # a root policy without a measurement pin (never in production)

Its identity key toward the root is enrolled by ``attestfl leaf enroll --config aggregator.toml``
into ``<state_dir>/leaf-identity.sealed``, sealed to the code's measurement like a site's identity
key (not to the configuration: the root pins the key, the leaf's file pins the root; sealing to the
configuration would make each depend on the other). The root admits the leaf like any site: its
``[admission.sites.<site_id>]`` rule pins the key (``identity_keys``) and bounds its weight
(``max_weight`` >= the sum of the leaf's sites' weights).

Each round, when the leaf's round closes, :meth:`LeafDriver.next_vector` uploads the aggregated
delta with weight = the sum of its participants' weights over the sealed, end-to-end encrypted
upload stream of the session the leaf opened after the root's evidence passed the leaf's policy;
it then waits for the root's next model and makes it the leaf's next model. With FedAvg at both
levels the root's weighted mean of the leaves' weighted means is the flat weighted mean.

The leaf's audit log records ``parent_joined`` (the root's key, platform, session), and per round
``parent_forward`` (round, attempt, the partial aggregate's SHA-256 and weight, the root's signed
receipt) and ``parent_model`` (the root's next model's SHA-256). The root's log has the leaf's
admission and upload like any site's.
"""

from __future__ import annotations

import argparse
import hashlib
import json
import logging
import sys
import threading
import time
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any, TextIO

import grpc
import msgspec
import numpy as np

from attestation.errors import AttestflError, PolicyError
from attestation.policy import Policy
from protocol.config import ConfigError, Duration, PathText, parse_duration, read_endpoint, read_struct
from protocol.formulas import valid_site_id

if TYPE_CHECKING:
    from aggregator.config import AggregatorConfig
    from aggregator.rounds import RoundDriver, TaskConfig
    from enclave.attester import Attester
    from enclave.identity import SiteIdentity
    from enclave.sealing import SealingKeySource
    from protocol.tensors import ModelSpec

LOG = logging.getLogger("attestfl.aggregator")

#: The leaf's sealed identity key toward the root, in its ``state_dir``.
IDENTITY_FILE = "leaf-identity.sealed"
#: How often a closed round asks the root whether its next model exists.
POLL_SECONDS = 0.2


class LeafError(AttestflError):
    """The leaf cannot forward its round to the root (the root refused, stalled, or disagrees)."""


class ParentTable(msgspec.Struct, forbid_unknown_fields=True, frozen=True, kw_only=True):
    """``[parent]`` as written (see the module docstring)."""

    aggregator: str
    site_id: str
    policy: PathText
    timeout: Duration = 30
    connect_timeout: Duration = 600
    round_timeout: Duration = 3600
    allow_not_flat: bool = False
    INSECURE_accept_any_aggregator: bool = False


@dataclass(frozen=True)
class ParentConfig:
    """``[parent]`` read and checked: where the root is and how the leaf trusts it."""

    aggregator: str
    site_id: str
    policy: Policy
    identity: Path
    timeout: float = 30.0
    connect_timeout: float = 600.0
    round_timeout: float = 3600.0
    allow_not_flat: bool = False
    insecure_unpinned: bool = False


def read_parent(config: AggregatorConfig, *, load_policy: bool = True) -> ParentConfig:
    """The ``[parent]`` table of ``config`` (a :class:`ConfigError` naming the file and key),
    after :func:`check_tree` has accepted the leaf's ``[task]``. ``load_policy=False``
    (enrolment) leaves the root's policy unread."""
    from fedsite.client import SitePolicyError, require_measurement_pins

    try:
        table = read_struct(config.parent, ParentTable, "parent")
        read_endpoint(table.aggregator, "parent", "aggregator")
        if not valid_site_id(table.site_id):
            raise ConfigError("[parent] site_id: 1-128 letters, digits, '-', '_' or '.'")
        durations = {
            key: parse_duration(getattr(table, key), "parent", key)
            for key in ("timeout", "connect_timeout", "round_timeout")
        }
        check_tree(config.task, allow_not_flat=table.allow_not_flat)
        policy = Policy()
        try:
            if load_policy:
                policy = Policy.load(config.path.parent / table.policy)
                require_measurement_pins(policy, allow_unpinned=table.INSECURE_accept_any_aggregator)
        except (PolicyError, SitePolicyError) as exc:
            text = str(exc).replace("[site] INSECURE_", "[parent] INSECURE_")  # a leaf's key, not a site's
            raise ConfigError(f"[parent] policy {table.policy}: {text}") from None
    except ConfigError as exc:
        raise ConfigError(f"{config.path}: {exc}") from None
    return ParentConfig(
        aggregator=table.aggregator,
        site_id=table.site_id,
        policy=policy,
        identity=config.state_dir / IDENTITY_FILE,
        allow_not_flat=table.allow_not_flat,
        insecure_unpinned=table.INSECURE_accept_any_aggregator,
        **durations,
    )


# --- which [task] a tree preserves -----------------------------------------------------------

#: strategy at the leaves -> why a tree of them is not the flat federation (FedAvg is absent: it is).
NOT_FLAT = {
    "median": "the median of the leaves' medians is not the median of all sites' updates",
    "trimmed_mean": "a trimmed mean of trimmed means trims per leaf, not over all sites",
    "krum": "Krum picks per leaf among its sites only; the root cannot pick among all sites",
}


def tree_differences(task: TaskConfig) -> list[str]:
    """Why a tree whose leaves run ``task`` (and whose root runs FedAvg, no clip, no DP) would
    not give the flat federation's model: an empty list when it gives it (to float32 tolerance).
    ``clip_norm`` at a leaf clips each site's update, as the flat aggregator does: preserved."""
    reasons = []
    base = task.strategy.base.name
    if base != "fedavg":
        reasons.append(
            f"[task] strategy = {base!r}: {NOT_FLAT.get(base, 'only fedavg is known to be preserved by a tree')}"
        )
    if task.drift is not None and task.drift.quarantine:
        reasons.append(
            "[task.drift] quarantine: a leaf's drift rules compare a site with its leaf's sites only, so it may "
            "exclude other updates than the flat aggregator would"
        )
    if task.dp is not None:
        reasons.append(
            "[task.dp]: central noise is added at every leaf (the root's model carries the noise of each leaf, "
            "and each leaf's accountant counts only its own sites' rounds)"
        )
    return reasons


def check_tree(task: TaskConfig, *, allow_not_flat: bool) -> None:
    """Refuse at start a leaf ``[task]`` that a tree does not preserve, unless the operator opted
    in (``[parent] allow_not_flat = true``); refuse always what a leaf cannot do."""
    if task.mode != "sync":
        raise ConfigError(
            '[task] mode: a leaf forwards each closed round to its root: only mode = "sync" has rounds to forward'
        )
    reasons = tree_differences(task)
    if reasons and not allow_not_flat:
        raise ConfigError(
            f"{reasons[0]}: this leaf's tree would not compute the flat federation's model; "
            "use fedavg, or set [parent] allow_not_flat = true to accept it (docs/hierarchy.md)"
        )


# --- the leaf's link to the root -------------------------------------------------------------


def leaf_sealing(config: AggregatorConfig) -> SealingKeySource:
    """The sealing key of the leaf's identity: bound to the code's measurement, as a site's is
    (the simulated TEE: the launch measurement of the code without the configuration)."""
    from enclave.attester import open_attester
    from enclave.sealing import sealing_key_for

    attester = open_attester(config.tee, simulated_dir=config.simulated_dir)
    sealing = sealing_key_for(attester, config.simulated_dir)
    if sealing is None:
        raise ConfigError(
            f"{config.path}: [parent]: this TEE has no local sealing key (TDX): the leaf's identity key must "
            "come from a key broker"
        )
    return sealing


def _digest(data: bytes | bytearray | memoryview) -> str:
    return hashlib.sha256(data).hexdigest()


class ParentLink:
    """The leaf's session with the root: a :class:`fedsite.client.SiteClient` whose evidence is
    the leaf's own TEE's, whose identity is the leaf's enrolled key."""

    def __init__(
        self, parent: ParentConfig, attester: Attester, identity: SiteIdentity, events: Any, spec: ModelSpec
    ) -> None:
        from fedsite.client import SiteClient

        self.parent = parent
        self.events = events
        self.spec = spec
        #: Set when the leaf's server stops: a forward waiting for the root gives up.
        self.stopping = threading.Event()
        self.client = SiteClient(
            parent.aggregator,
            site_id=parent.site_id,
            policy=parent.policy,
            identity=identity,
            attester=attester,
            timeout=parent.timeout,
            allow_unpinned_aggregator=parent.insecure_unpinned,
        )

    def join(self, wait: float) -> None:
        """Verify the root's evidence under the leaf's policy and be admitted (transient
        failures retried for ``wait`` seconds; a refusal raises at once); logged."""
        from fedsite.sdk import join_with_retry

        def say(text: str) -> None:
            LOG.info(f"parent: {text}", extra={"fields": {"parent": self.parent.aggregator}})

        from fedsite.client import AdmissionRefused, AggregatorNotTrusted

        try:
            session = join_with_retry(self.client, wait=wait, say=say)
        except (AdmissionRefused, AggregatorNotTrusted) as exc:
            self.events.record(
                "parent_refused",
                parent=self.parent.aggregator,
                site=self.parent.site_id,
                by="root" if isinstance(exc, AdmissionRefused) else "leaf",
                reasons=list(exc.reasons),
            )
            raise
        claims = session.aggregator_appraisal.claims
        measurement = claims.get("measurement") if isinstance(claims, dict) else None
        self.events.record(
            "parent_joined",
            parent=self.parent.aggregator,
            site=self.parent.site_id,
            parent_ed25519=session.aggregator_keys.ed25519.hex(),
            parent_platform=session.aggregator_appraisal.platform,
            parent_measurement=measurement if isinstance(measurement, str) else None,
            session=session.claims.session_id.hex(),
        )

    def check_task(self, task_config: TaskConfig, initial_sha256: str, start_round: int = 1) -> Any:
        """The root's task must be this leaf's: same model spec, rounds and initial model, at this
        leaf's round (or the next: the root took this leaf's partial aggregate before the leaf
        restarted); it must release the final model to its sites (the leaves), and take float32
        updates."""
        from protocol.tensors import ModelSpec

        task = self.client.task()
        problems = []
        if ModelSpec.from_json(task.model_spec) != task_config.spec:
            problems.append("the root's model spec is not this leaf's initial model's")
        if task.rounds_total != task_config.rounds:
            problems.append(f"the root trains {task.rounds_total} rounds, this leaf {task_config.rounds}")
        if task.initial_model_sha256 and bytes(task.initial_model_sha256).hex() != initial_sha256:
            problems.append("the root's initial model is not this leaf's (SHA-256 differs)")
        if start_round <= task_config.rounds and task.round not in (start_round, start_round + 1):
            problems.append(
                f"the root is at round {task.round}, this leaf at round {start_round}: a leaf joins its root's "
                "training from the start (or resumes where it stopped)"
            )
        if not task.release_to_sites:
            problems.append("the root does not release the final model to its sites (the leaves)")
        if (task.compression or "float32") != "float32" and not self.parent.allow_not_flat:
            problems.append(f"the root takes {task.compression} updates: the partial aggregates would be rounded")
        if problems:
            raise LeafError(f"[parent] {self.parent.aggregator}: " + "; ".join(problems))
        return task

    def forward(self, round_number: int, delta: dict[str, np.ndarray], weight: float) -> bytes | bytearray | memoryview:
        """Upload round ``round_number``'s partial aggregate (again for each new attempt of the
        root's round, and after a re-join) and return the root's next model (safetensors bytes,
        digest checked against the root's task)."""
        client = self.client
        deadline = time.monotonic() + self.parent.round_timeout
        uploaded: int | None = None
        forwarded = False  # the root holds this round's partial aggregate (False: it moved on without it)
        while True:
            if self.stopping.is_set():
                from aggregator.service import ServerStopping

                raise ServerStopping(f"round {round_number}: the leaf stops while waiting for the root's next model")
            if time.monotonic() > deadline:
                raise LeafError(
                    f"round {round_number}: the root gave no next model within [parent] round_timeout "
                    f"({self.parent.round_timeout:g} s)"
                )
            try:
                # After the forward: a long poll, answered when the root's round moves on.
                task = client.task(after=(round_number, uploaded) if uploaded is not None else None)
                if task.finished or task.round > round_number:
                    if task.round != round_number + 1:
                        raise LeafError(
                            f"round {round_number}: the root is at round {task.round}, not {round_number + 1}"
                        )
                    break
                if task.round < round_number:
                    raise LeafError(f"round {round_number}: the root is behind (round {task.round})")
                if uploaded != task.attempt:
                    if weight > task.max_weight:
                        raise LeafError(
                            f"round {round_number}: the leaf's weight {weight:g} is over its max_weight "
                            f"{task.max_weight:g} at the root (raise it in the root's rule for {client.site_id!r})"
                        )
                    try:
                        receipt = client.upload_update(round_number, delta, weight=weight, attempt=task.attempt)
                    except grpc.RpcError as exc:
                        if exc.code() != grpc.StatusCode.ALREADY_EXISTS:
                            raise
                        uploaded, forwarded = task.attempt, True  # an earlier try of this attempt got through
                        continue
                    uploaded, forwarded = task.attempt, True
                    self.events.record(
                        "parent_forward",
                        round=round_number,
                        attempt=task.attempt,
                        parent=self.parent.aggregator,
                        weight=weight,
                        partial_sha256=receipt.update_sha256.hex(),
                        receipt=receipt.to_json(),
                    )
                    continue
                if not task.waits:  # a root that does not hold long polls: poll
                    self.stopping.wait(POLL_SECONDS)
            except grpc.RpcError as exc:
                from fedsite.sdk import transient

                if not transient(exc) and exc.code() != grpc.StatusCode.UNAUTHENTICATED:
                    raise LeafError(
                        f"round {round_number}: the root refused: {exc.code().name}: {exc.details()}"
                    ) from None
                LOG.warning(
                    "parent: root unavailable or session ended; re-verifying and re-joining",
                    extra={"fields": {"round": round_number, "code": exc.code().name}},
                )
                if self.stopping.wait(1.0):
                    continue  # stopping: given up at the top of the loop
                self.join(wait=max(1.0, deadline - time.monotonic()))
                uploaded = None  # a restarted root kept no update of an unfinished round
        data = client.download_model_bytes(task.round, self.spec)
        expected = bytes(task.model_sha256)
        if expected and hashlib.sha256(data).digest() != expected:
            raise LeafError(f"round {round_number}: the root's model is not the one its task names")
        self.events.record(
            "parent_model",
            round=task.round,
            parent=self.parent.aggregator,
            model_sha256=_digest(data),
            finished=bool(task.finished),
            forwarded=forwarded,
        )
        return data


def make_leaf_driver(config: AggregatorConfig, attester: Attester, **options: Any) -> RoundDriver:
    """The :data:`aggregator.server.DriverFactory` of a leaf: its identity opened, the root
    verified and joined, the root's task checked against the leaf's, before the leaf serves."""
    from aggregator.rounds import RoundDriver
    from enclave.identity import load_identity
    from protocol.tensors import decode_tensors, flatten

    parent = read_parent(config)
    identity = load_identity(parent.identity, leaf_sealing(config), parent.site_id)
    task_config = config.task

    class LeafDriver(RoundDriver):
        """A round driver whose next model is the root's (see the module docstring)."""

        def next_vector(self, closing: Any, aggregate: Any) -> np.ndarray:
            from protocol.tensors import unflatten

            weight = float(sum(float(p["weight"]) for p in closing.participants.values()))
            delta = unflatten(np.asarray(aggregate.delta, np.float32), self.spec)
            data = link.forward(closing.round, delta, weight)
            tensors, _ = decode_tensors(data, self.spec)
            return flatten(dict(tensors), self.spec).astype(np.float32)

        def stop(self) -> None:
            """The server stops: a round close waiting for the root gives up (nothing committed)."""
            link.stopping.set()

    driver = LeafDriver(task_config, **options)
    link = ParentLink(parent, attester, identity, driver.events, driver.spec)
    link.join(wait=parent.connect_timeout)
    initial = _digest(driver._encode(flatten(task_config.initial_model, driver.spec)))
    link.check_task(task_config, initial, driver.round)
    return driver


def leaf_factory(config: AggregatorConfig) -> Any:
    """For :func:`aggregator.commands.run_serve`: the leaf's driver factory, its ``[parent]``
    table checked now (before the audit log is opened)."""
    read_parent(config)
    return make_leaf_driver


# --- commands --------------------------------------------------------------------------------


def run_leaf_enroll(args: argparse.Namespace, out: TextIO | None = None) -> int:
    from aggregator.config import AggregatorConfig
    from enclave.identity import enroll, load_identity

    out = out or sys.stdout
    config = AggregatorConfig.load(args.config)
    if config.parent is None:
        raise ConfigError(f"{config.path}: no [parent] table: this aggregator is not a leaf")
    parent = read_parent(config, load_policy=False)
    sealing = leaf_sealing(config)
    if getattr(args, "keep", False) and parent.identity.exists():  # an init container: enrol once, then show it
        identity = load_identity(parent.identity, sealing, parent.site_id)
    else:
        identity = enroll(parent.identity, sealing, parent.site_id, replace=args.replace)
    public = identity.public.hex()
    if args.json:
        print(
            json.dumps({"site_id": parent.site_id, "identity_public": public, "sealed": str(parent.identity)}), file=out
        )
    else:
        print(
            f"enrolled leaf {parent.site_id}: identity key sealed to {parent.identity}\n"
            f'the root\'s operator pins it:\n\n[admission.sites.{parent.site_id}]\nidentity_keys = ["{public}"]',
            file=out,
        )
    return 0


def add_leaf_commands(subparsers: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    """``attestfl leaf enroll``; ``attestfl serve`` of a file with a ``[parent]`` table serves a leaf."""
    import aggregator.commands

    aggregator.commands.leaf_driver = leaf_factory  # `attestfl serve` of a file with [parent]
    leaf = subparsers.add_parser(
        "leaf",
        help="a leaf aggregator of a hierarchical federation (docs/hierarchy.md)",
        description="Commands of a leaf aggregator: an aggregator.toml with a [parent] table.",
    )
    leaf_sub = leaf.add_subparsers(dest="leaf_command", required=True, metavar="COMMAND")
    enroll = leaf_sub.add_parser(
        "enroll",
        help="create the leaf's identity key toward its root, sealed in its state_dir",
        description="Create the leaf's identity key, sealed to this TEE and the code's measurement, in "
        f"<state_dir>/{IDENTITY_FILE}; prints the public key the root's admission rule pins. Exit 0: enrolled; "
        "2: unusable input.",
    )
    enroll.add_argument("--config", required=True, metavar="FILE", help="the leaf's aggregator.toml")
    enroll.add_argument(
        "--replace", action="store_true", help="replace an enrolled key (the root must pin the new one)"
    )
    enroll.add_argument(
        "--keep", action="store_true", help="if a key is already enrolled, print its public key (exit 0) instead"
    )
    enroll.add_argument("--json", action="store_true", help="print one JSON object")
    enroll.set_defaults(handler=run_leaf_enroll)
