"""Model delivery under the task's release policy (docs/model-delivery.md).

``[task]``::

    deliver = "final"                  # or "every-round": each round's model too
    release = ["admitted-sites"]       # the default; [] releases the final model to nobody
    # or, with a model owner:
    [task.release]
    to = ["admitted-sites"]            # default; to = [] for the owner alone
    owner_keys = ["<X25519 public key, hex>"]   # attestfl owner keygen prints one

Sites necessarily receive each round's model to train on; ``release`` decides who receives the
*final* model (and, with ``deliver = "every-round"``, whom each round's model is kept for):
admitted sites over their attested sessions (``DownloadModel``), model owners as a file sealed
to their key (:func:`protocol.delivery.seal_to_owner`) in ``<state_dir>/delivery``. Nobody else,
the operator included, gets the model in the clear: it leaves the enclave only sealed.

Audit entries (logged durably before what they state happens):

- ``model_initial``: the initial model's SHA-256 as served (round 1's model) and of its file,
  the release policy;
- ``model_released``: a model released (the final one; each round's with every-round), its
  SHA-256 (the ``round`` entry's ``model_sha256``), the owner files sealed and their digests;
- ``model_delivered``: a site received a released model over its session.
"""

from __future__ import annotations

import hashlib
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import grpc
import numpy as np

from aggregator.service import EventSink, UpdateRefused
from attestation.errors import AttestflError
from attestation.files import write_atomically
from protocol.delivery import DELIVER_CHOICES, FINAL_MODEL, SITES, round_model_name, seal_to_owner
from protocol.tensors import encode_tensor_parts

#: At most this many owner keys (each gets its own sealed file per released model).
MAX_OWNER_KEYS = 16


class ReleaseConfigError(AttestflError, ValueError):
    """``[task] release`` / ``deliver`` is unusable."""


@dataclass(frozen=True)
class ReleasePolicy:
    """Who receives released models: admitted sites, and/or these owner X25519 keys."""

    sites: bool = True
    owner_keys: tuple[bytes, ...] = ()
    deliver: str = "final"

    def describe(self) -> dict[str, Any]:
        return {
            "deliver": self.deliver,
            "to": [SITES] if self.sites else [],
            "owner_keys": [key.hex() for key in self.owner_keys],
        }


def _recipients(value: Any, where: str) -> bool:
    if not isinstance(value, list) or not all(isinstance(v, str) for v in value):
        raise ReleaseConfigError(f'{where}: expected a list of recipients like ["{SITES}"], got {value!r}')
    unknown = sorted(set(value) - {SITES})
    if unknown:
        raise ReleaseConfigError(
            f'{where}: unknown recipient(s) {", ".join(map(repr, unknown))}; allowed: "{SITES}" '
            '(a model owner is named by key: [task.release] owner_keys = ["<X25519 public key hex>"])'
        )
    return SITES in value


def read_release(value: Any, deliver: str = "final") -> ReleasePolicy:
    """``[task] release`` (a list, or the ``[task.release]`` table) and ``deliver``."""
    if deliver not in DELIVER_CHOICES:
        raise ReleaseConfigError(
            f"[task] deliver: expected one of {', '.join(map(repr, DELIVER_CHOICES))}, got {deliver!r}"
        )
    if value is None:
        return ReleasePolicy(deliver=deliver)
    if isinstance(value, list):
        return ReleasePolicy(sites=_recipients(value, "[task] release"), deliver=deliver)
    if not isinstance(value, dict):
        raise ReleaseConfigError(f"[task] release: expected a list or a [task.release] table, got {value!r}")
    unknown = sorted(set(value) - {"to", "owner_keys"})
    if unknown:
        raise ReleaseConfigError(f"[task.release]: unknown key(s) {', '.join(unknown)}; allowed: owner_keys, to")
    sites = _recipients(value.get("to", [SITES]), "[task.release] to")
    keys = value.get("owner_keys", [])
    if not isinstance(keys, list) or len(keys) > MAX_OWNER_KEYS:
        raise ReleaseConfigError(f"[task.release] owner_keys: expected a list of at most {MAX_OWNER_KEYS} keys (hex)")
    owners = []
    for key in keys:
        try:
            raw = bytes.fromhex(key) if isinstance(key, str) else b""
        except ValueError:
            raw = b""
        if len(raw) != 32:
            raise ReleaseConfigError(
                f"[task.release] owner_keys: {str(key)[:80]!r} is not an X25519 public key (64 hex digits; "
                "`attestfl owner keygen` prints one)"
            )
        owners.append(raw)
    return ReleasePolicy(sites=sites, owner_keys=tuple(dict.fromkeys(owners)), deliver=deliver)


def served_digest(model: dict[str, np.ndarray]) -> tuple[bytes, int]:
    """SHA-256 and length of the bytes the aggregator serves for a model (what the round digests
    cover), hashed from the tensors' own memory: no encoded copy of a large model."""
    hasher, length = hashlib.sha256(), 0
    for part in encode_tensor_parts(model):
        hasher.update(part)
        length += memoryview(part).nbytes
    return hasher.digest(), length


class Delivery:
    """The release policy at work: hooked into the round driver (``on_model``) and the service
    (``fill_task``, ``check_download``)."""

    def __init__(self, policy: ReleasePolicy, *, rounds: int, directory: Path, events: EventSink) -> None:
        self.policy = policy
        self.rounds = rounds
        self.directory = directory
        self.events = events
        self.digests: dict[int, bytes] = {}
        self.released: dict[int, bytes] = {}
        self.initial = b""

    def start(
        self,
        initial: dict[str, np.ndarray],
        file_sha256: str | None,
        driver: Any,
        resumed: tuple[bytes | bytearray, bytes] | None = None,
    ) -> None:
        """Log the initial model and the policy (``model_initial``); on a restart, the current model.
        ``resumed``: a checkpoint's model as loaded and the SHA-256 its load checked, used when the
        driver serves those very bytes (it adopts the loaded buffer); else the model is hashed here."""
        self.initial, initial_length = served_digest(initial)
        self.events.record(
            "model_initial",
            model_sha256=self.initial.hex(),
            file_sha256=file_sha256,
            bytes=initial_length,
            release=self.policy.describe(),
        )
        self.digests[1] = self.initial
        current = driver.task().round
        if current != 1:
            model = driver.model_bytes(current)
            if resumed is not None and model is resumed[0]:
                self.digests[current] = resumed[1]
            else:
                self.digests[current] = hashlib.sha256(model).digest()
            if driver.task().finished:
                self.on_model(current, model, True, self.digests[current])

    def on_model(self, round_number: int, model: bytes, finished: bool, digest: bytes) -> None:
        """A round closed and ``round_number``'s model exists (``digest``: its SHA-256, as the
        driver logged it): release it if it is the final one (or every round's is delivered).
        The owners' sealed files are made, logged, then written."""
        self.digests[round_number] = digest
        if not finished and self.policy.deliver != "every-round":
            return
        name = (FINAL_MODEL if finished else round_model_name(round_number)).removesuffix(".safetensors")
        sealed = [
            (key, f"{name}.{key.hex()[:16]}.afm", seal_to_owner(model, key, round_number))
            for key in self.policy.owner_keys
        ]
        self.events.record(
            "model_released",
            round=round_number,
            final=finished,
            model_sha256=digest.hex(),
            to_sites=self.policy.sites,
            owners=[
                {"owner_key": key.hex(), "file": file, "sealed_sha256": hashlib.sha256(data).hexdigest()}
                for key, file, data in sealed
            ],
        )
        for _key, file, data in sealed:
            self._write(self.directory / file, data)
        self.released[round_number] = digest

    def _write(self, path: Path, data: bytes) -> None:
        write_atomically(path, data)

    def fill_task(self, response: Any, round_number: int) -> None:
        response.deliver = self.policy.deliver
        response.release_to_sites = self.policy.sites
        response.model_sha256 = self.digests.get(round_number, b"")
        response.initial_model_sha256 = self.initial

    def check_download(self, site_id: str, round_number: int) -> dict[str, Any] | None:
        """Refuse the final model to sites the policy does not name; the fields of the
        ``model_delivered`` entry when a released model goes to a site (None otherwise)."""
        final = round_number == self.rounds + 1
        if final and not self.policy.sites:
            raise UpdateRefused(
                "the task's release policy does not give the final model to sites ([task] release)",
                grpc.StatusCode.PERMISSION_DENIED,
            )
        digest = self.released.get(round_number)
        if digest is None:
            if final:
                raise UpdateRefused("the final model is not released yet", grpc.StatusCode.UNAVAILABLE)
            return None
        if not self.policy.sites:
            return None
        return {"site": site_id, "round": round_number, "final": final, "model_sha256": digest.hex()}


def start_delivery(
    config: Any, driver: Any, events: EventSink, resumed: tuple[bytes | bytearray, bytes] | None = None
) -> Delivery:
    """The delivery of an ``attestfl serve`` run (``config``: its AggregatorConfig): the
    configuration bundle and the initial model logged, the driver hooked. ``resumed``: on a
    restart, the checkpoint's model and its SHA-256, checked as it was loaded (:meth:`Delivery.start`)."""
    from enclave.config_bundle import config_bundle

    task = config.task
    bundle = config_bundle(config.path)
    events.record("config_bundle", **bundle.describe())
    path = task.initial_model_path
    file_sha256 = None
    if path is not None:
        hasher = hashlib.sha256()
        with open(path, "rb") as handle:
            while block := handle.read(1 << 20):
                hasher.update(block)
        file_sha256 = hasher.hexdigest()
    delivery = Delivery(task.release, rounds=task.rounds, directory=config.state_dir / "delivery", events=events)
    delivery.start(task.initial_model, file_sha256, driver, resumed)
    driver.on_model = delivery.on_model
    return delivery
