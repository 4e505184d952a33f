"""The site SDK: wrap a torch ``nn.Module`` with local ``train`` and ``evaluate`` functions and
take part in rounds over the attested protocol.

    from aggregator.sdk import TorchTrainer, run_site
    trainer = TorchTrainer(model, train=my_train, evaluate=my_evaluate)
    summary = run_site(client, trainer)      # client: aggregator.site.SiteClient

``train(model) -> examples`` trains in place on local data and returns the number of
examples used (the update's weight); ``evaluate(model) -> (metrics, examples)`` evaluates on
held-out data. The site uploads only the *delta* (local model minus the round's model),
sealed to the attested enclave; it never adds noise itself (central DP happens inside the
TEE). When the aggregator restarts (new enclave keys, new evidence), the site re-verifies
and re-joins before sending anything else.
"""
from __future__ import annotations

import sys
import time
from dataclasses import dataclass, field
from typing import Any, Callable, TextIO

import grpc
import numpy as np

from .site import AdmissionRefused, AggregatorNotTrusted, AggregatorUnreachable, SiteClient
from .update import ModelSpec

Metrics = dict[str, float]


@dataclass
class TorchTrainer:
    """A torch module and the site's local train/evaluate functions."""

    model: Any  # torch.nn.Module
    train: Callable[[Any], int]
    evaluate: Callable[[Any], tuple[Metrics, int]] | None = None

    def get(self) -> dict[str, np.ndarray]:
        return {name: tensor.detach().cpu().numpy().astype(np.float32, copy=True) for name, tensor in self.model.state_dict().items()}

    def set(self, tensors: dict[str, np.ndarray]) -> None:
        import torch

        state = self.model.state_dict()
        missing = set(state) - set(tensors)
        if missing:
            raise ValueError(f"the global model lacks {sorted(missing)} of the local model")
        self.model.load_state_dict({name: torch.from_numpy(np.array(tensors[name], dtype=np.float32)) for name in state})


@dataclass
class SiteRunSummary:
    site_id: str
    rounds_trained: list[int] = field(default_factory=list)
    metrics: dict[int, Metrics] = field(default_factory=dict)
    joins: int = 0
    receipts: list[Any] = field(default_factory=list)


class _Progress:
    def __init__(self, site_id: str, total: int, out: TextIO | None) -> None:
        self.site_id = site_id
        self.total = total
        self.out = out

    def say(self, text: str) -> None:
        if self.out is not None:
            print(f"[{self.site_id}] {text}", file=self.out, flush=True)


_RETRYABLE = (grpc.StatusCode.UNAVAILABLE, grpc.StatusCode.UNAUTHENTICATED, grpc.StatusCode.DEADLINE_EXCEEDED, grpc.StatusCode.CANCELLED)


def run_site(
    client: SiteClient,
    trainer: TorchTrainer,
    *,
    poll_seconds: float = 0.2,
    reconnect_seconds: float = 120.0,
    progress: TextIO | None = sys.stderr,
) -> SiteRunSummary:
    """Join, then train every round until the task is finished. Raises
    :class:`AggregatorNotTrusted` or :class:`AdmissionRefused` without sending anything more."""
    summary = SiteRunSummary(client.site_id)
    say = _Progress(client.site_id, 0, progress).say
    done: set[tuple[int, int]] = set()
    evaluated: set[int] = set()
    last_ok = time.monotonic()

    def join() -> None:
        client.join()
        summary.joins += 1
        # A new aggregator instance keeps only what its sealed checkpoint holds: whatever this
        # site sent to the previous one for an unfinished round must be sent again.
        done.clear()
        say(f"verified the aggregator's evidence and joined (session {client.session.claims.session_id.hex()[:12]}...)" if client.session else "joined")

    def report(round_number: int, metrics: Metrics, examples: int, max_weight: float) -> None:
        # The admission rule bounds the example count a site may claim; an honest site stays under it.
        try:
            client.report_metrics(round_number, metrics, int(min(max(0, examples), max_weight)))
        except grpc.RpcError as exc:
            if exc.code() not in (grpc.StatusCode.FAILED_PRECONDITION, grpc.StatusCode.ALREADY_EXISTS, grpc.StatusCode.INVALID_ARGUMENT):
                raise
            say(f"round {round_number}: metrics not recorded: {exc.details()}")
            return
        summary.metrics[round_number] = metrics

    join()
    while True:
        try:
            task = client.task()
            spec = ModelSpec.from_json(task.model_spec)
            max_weight = task.max_weight or 1.0
            last_ok = time.monotonic()
            if task.finished:
                if task.round not in evaluated and trainer.evaluate is not None:
                    trainer.set(client.download_model(task.round, spec))
                    metrics, examples = trainer.evaluate(trainer.model)
                    report(task.round, metrics, examples, max_weight)
                    say(f"final model: {_fmt(metrics)}")
                return summary
            key = (task.round, task.attempt)
            if key in done:
                time.sleep(poll_seconds)
                continue
            global_model = client.download_model(task.round, spec)
            trainer.set(global_model)
            if task.evaluate and trainer.evaluate is not None and task.round not in evaluated:
                metrics, examples = trainer.evaluate(trainer.model)
                report(task.round, metrics, examples, max_weight)
                evaluated.add(task.round)
            examples = trainer.train(trainer.model)
            local = trainer.get()
            delta = {name: local[name] - global_model[name] for name in global_model}
            weight = min(float(max(1, int(examples))), max_weight)
            try:
                receipt = client.upload_update(task.round, delta, weight=weight, attempt=task.attempt)
                summary.receipts.append(receipt)
                summary.rounds_trained.append(task.round)
                say(f"round {task.round}/{task.rounds_total}: update sealed and accepted (receipt {receipt.update_sha256.hex()[:12]}...)")
            except grpc.RpcError as exc:
                if exc.code() in (grpc.StatusCode.ALREADY_EXISTS, grpc.StatusCode.FAILED_PRECONDITION):
                    say(f"round {task.round}: {exc.details()}")
                else:
                    raise
            done.add(key)
        except grpc.RpcError as exc:
            if exc.code() not in _RETRYABLE or time.monotonic() - last_ok > reconnect_seconds:
                raise
            # The aggregator restarted (new keys: our session is void) or is briefly away:
            # verify its new evidence and join again before sending anything else.
            say(f"aggregator unavailable or session ended ({exc.code().name}); re-verifying and re-joining")
            time.sleep(1.0)
            try:
                join()
            except (grpc.RpcError, AggregatorUnreachable):
                continue


def _fmt(metrics: Metrics) -> str:
    return ", ".join(f"{k}={v:.4f}" for k, v in sorted(metrics.items()))


__all__ = ["AdmissionRefused", "AggregatorNotTrusted", "SiteRunSummary", "TorchTrainer", "run_site"]
