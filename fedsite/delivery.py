"""A site receives models under the task's release policy (docs/model-delivery.md).

Every model a site downloads is checked against the digest the aggregator states for it in
the (sealed, authenticated) task; the final model — and with ``deliver = "every-round"`` each
round's — is written to the site's state directory as safetensors with its SHA-256 beside it
(``final-model.safetensors`` and ``final-model.safetensors.sha256``, ``sha256sum -c`` format):
the digest the audit log's ``round`` / ``model_released`` entries name. A download larger than a
few MB shows a progress bar.
"""

from __future__ import annotations

import hashlib
from dataclasses import dataclass
from pathlib import Path
from typing import Any, TextIO

import numpy as np

from fedsite.client import AggregatorNotTrusted, SiteClient
from protocol.delivery import FINAL_MODEL, round_model_name, write_model
from protocol.tensors import ModelSpec, decode_tensors

#: Downloads at least this large show a progress bar.
PROGRESS_BYTES = 4 * 1024 * 1024


@dataclass
class ModelKeeper:
    """Downloads models for one site and keeps the released ones in ``directory``."""

    client: SiteClient
    directory: Path | None
    progress: TextIO | None = None
    final_path: Path | None = None
    final_sha256: str | None = None

    def fetch(self, task: Any, spec: ModelSpec) -> bytes | bytearray | memoryview:
        """The model of ``task.round``, its digest checked against the task's."""
        total = spec.data_bytes
        bar = None
        if self.progress is not None and total >= PROGRESS_BYTES:
            from tqdm import tqdm

            bar = tqdm(
                total=total,
                unit="B",
                unit_scale=True,
                unit_divisor=1024,
                desc=f"[{self.client.site_id}] model of round {task.round}",
                file=self.progress,
                leave=False,
            )
        try:
            data = self.client.download_model_bytes(task.round, spec, on_chunk=bar.update if bar else None)
        finally:
            if bar is not None:
                bar.close()
        expected = bytes(task.model_sha256)
        if expected and hashlib.sha256(data).digest() != expected:
            raise AggregatorNotTrusted(
                f"the model of round {task.round} is not the one the aggregator's task names "
                f"(SHA-256 {hashlib.sha256(data).hexdigest()[:16]}..., expected {expected.hex()[:16]}...)"
            )
        return data

    def keep(self, task: Any, data: bytes | bytearray | memoryview) -> Path | None:
        """Write the model if it is released to this site and kept (the final one; every
        round's with every-round). Returns the file written, or None."""
        if self.directory is None or not task.release_to_sites:
            return None
        if task.finished:
            self.final_path, self.final_sha256 = write_model(self.directory, FINAL_MODEL, data)
            return self.final_path
        if task.deliver == "every-round":
            return write_model(self.directory, round_model_name(task.round), data)[0]
        return None


def decode(data: bytes | bytearray | memoryview, spec: ModelSpec) -> dict[str, np.ndarray]:
    tensors, _metadata = decode_tensors(data, spec)
    return {name: array.copy() for name, array in tensors.items()}
