"""The site SDK: wrap a torch ``nn.Module`` with local ``train`` and ``evaluate`` functions and
take part in rounds over the attested protocol.

    from fedsite.sdk import TorchTrainer, run_site
    trainer = TorchTrainer(model, train=my_train, evaluate=my_evaluate)
    summary = run_site(client, trainer)      # client: fedsite.client.SiteClient

``train(model) -> examples`` trains in place on local data and returns the number of
examples used (the update's weight); ``evaluate(model) -> (metrics, examples)`` evaluates on
held-out data. The site uploads only the *delta* (local model minus the round's model),
sealed to the attested enclave; it never adds noise itself (central DP happens inside the
TEE). When the aggregator restarts (new enclave keys, new evidence), the site re-verifies
and re-joins before sending anything else.
"""

from __future__ import annotations

import dataclasses
import os
import sys
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, TextIO

import grpc
import numpy as np

from attestation.files import write_atomically
from fedsite.client import AdmissionRefused, AggregatorNotTrusted, AggregatorUnreachable, SiteClient, SiteError
from protocol.tensors import ModelSpec

Metrics = dict[str, float]


@dataclass
class TorchTrainer:
    """A torch module and the site's local train/evaluate functions."""

    model: Any  # torch.nn.Module
    train: Callable[[Any], int]
    evaluate: Callable[[Any], tuple[Metrics, int]] | None = None
    #: After the last round: a local recalibration's before/after metrics (fedsite/risk.py),
    #: reported with the final model's evaluation; the global model is not changed.
    recalibrate: Callable[[Any], Metrics] | None = None
    #: The site's dataset card (protocol/cards.py, fedsite/cards.py), sent signed with every metrics report.
    card: Callable[[], Any] | None = None

    def get(self) -> dict[str, np.ndarray]:
        return {
            name: tensor.detach().cpu().numpy().astype(np.float32, copy=True)
            for name, tensor in self.model.state_dict().items()
        }

    def set(self, tensors: dict[str, np.ndarray]) -> None:
        import torch

        state = self.model.state_dict()
        missing = set(state) - set(tensors)
        if missing:
            raise ValueError(f"the global model lacks {sorted(missing)} of the local model")
        self.model.load_state_dict(
            {name: torch.from_numpy(np.array(tensors[name], dtype=np.float32)) for name in state}
        )


@dataclass
class SiteState:
    """What a site keeps between runs, in its state directory: the newest signed audit tree head
    it has seen (``tree-head.cbor``: a restarted or rolled-back aggregator must extend it) and
    every receipt it got (``receipts.jsonl``, one JSON object per line)."""

    directory: Path

    def load_tree_head(self) -> Any:
        from protocol.auditlog.heads import HeadError, TreeHead

        path = self.directory / "tree-head.cbor"
        if not path.exists():
            return None
        from attestation.files import read_bounded

        try:
            return TreeHead.from_bytes(read_bounded(path, 4096, "kept audit tree head", HeadError))
        except HeadError as exc:
            raise SiteError(
                f"{path}: the kept audit tree head is unusable ({exc}); move it away only if you know why"
            ) from None

    def save_tree_head(self, head: Any) -> None:
        self._write(self.directory / "tree-head.cbor", head.to_bytes())

    def append_receipt(self, receipt: Any) -> None:
        import json

        self.directory.mkdir(parents=True, exist_ok=True)
        with open(self.directory / "receipts.jsonl", "a", encoding="utf-8") as handle:
            handle.write(json.dumps(receipt.to_json(), sort_keys=True) + "\n")
            handle.flush()
            os.fsync(handle.fileno())

    def _write(self, path: Path, data: bytes) -> None:
        write_atomically(path, data)


@dataclass
class SiteRunSummary:
    site_id: str
    rounds_trained: list[int] = field(default_factory=list)
    metrics: dict[int, Metrics] = field(default_factory=dict)
    joins: int = 0
    receipts: list[Any] = field(default_factory=list)
    #: The final model written to the state directory and its SHA-256 (when released to sites).
    final_model: Path | None = None
    final_model_sha256: str | None = None


class _Progress:
    def __init__(self, site_id: str, total: int, out: TextIO | None) -> None:
        self.site_id = site_id
        self.total = total
        self.out = out

    def say(self, text: str) -> None:
        if self.out is not None:
            print(f"[{self.site_id}] {text}", file=self.out, flush=True)


_RETRYABLE = (
    grpc.StatusCode.UNAVAILABLE,
    grpc.StatusCode.UNAUTHENTICATED,
    grpc.StatusCode.DEADLINE_EXCEEDED,
    grpc.StatusCode.CANCELLED,
    grpc.StatusCode.RESOURCE_EXHAUSTED,
)
#: Failures worth trying again: the aggregator is away, restarting or busy. A refusal
#: (untrusted aggregator, admission refused) is never retried.
_TRANSIENT_JOIN = (
    grpc.StatusCode.UNAVAILABLE,
    grpc.StatusCode.DEADLINE_EXCEEDED,
    grpc.StatusCode.RESOURCE_EXHAUSTED,
    grpc.StatusCode.CANCELLED,
)


def transient(exc: BaseException) -> bool:
    """True for failures that retrying may cure (the aggregator unreachable, restarting or busy)."""
    if isinstance(exc, AggregatorUnreachable):
        return True
    return isinstance(exc, grpc.RpcError) and exc.code() in _TRANSIENT_JOIN


def join_with_retry(client: SiteClient, *, wait: float, say: Callable[[str], None] | None = None) -> Any:
    """``client.join()``, retried with exponential backoff (0.5 s doubling to 10 s, with jitter)
    for up to ``wait`` seconds while the failure is transient; refusals raise at once."""
    import tenacity

    def log(state: tenacity.RetryCallState) -> None:
        if say is not None and state.outcome is not None:
            exc = state.outcome.exception()
            what = exc.code().name if isinstance(exc, grpc.RpcError) else str(exc).splitlines()[0]
            delay = state.next_action.sleep if state.next_action else 0
            say(f"aggregator not reachable yet ({what}); retrying in {delay:.1f} s")

    retrying = tenacity.Retrying(
        retry=tenacity.retry_if_exception(transient),
        wait=tenacity.wait_exponential(multiplier=0.5, max=10.0) + tenacity.wait_random(0, 0.5),
        stop=tenacity.stop_after_delay(wait),
        before_sleep=log,
        reraise=True,
    )
    return retrying(client.join)


def run_site(
    client: SiteClient,
    trainer: TorchTrainer,
    *,
    poll_seconds: float = 0.2,
    reconnect_seconds: float = 120.0,
    progress: TextIO | None = sys.stderr,
    wait: float = 60.0,
    state: SiteState | None = None,
    vendor_data: Any = None,
    bars: TextIO | None = None,
) -> SiteRunSummary:
    """Join, then train every round until the task is finished. Raises
    :class:`AggregatorNotTrusted` or :class:`AdmissionRefused` without sending anything more.
    With ``vendor_data`` (a :class:`fedsite.vendor_eval.EvaluationData`) the site also evaluates
    the vendor models the task says are waiting for it (docs/vendor-evaluation.md). ``bars``: the
    stream for progress bars (training, large transfers: :mod:`fedsite.progress`), None for none."""
    run = _SiteRun(client, trainer, progress=progress, wait=wait, state=state)
    run.vendor_data = vendor_data
    if bars is not None and progress is not None:
        from fedsite.progress import SiteBars

        run.bars = SiteBars(client.site_id, bars, progress)
        run.say = lambda text: run.bars.say(f"[{client.site_id}] {text}")
        run.keeper.progress = bars
    try:
        return _run_rounds(run, poll_seconds, reconnect_seconds)
    finally:
        run.bars.close()


def _run_rounds(run: _SiteRun, poll_seconds: float, reconnect_seconds: float) -> SiteRunSummary:
    run.join()
    while True:
        try:
            outcome = run.step()
            if outcome == "finished":
                return run.summary
            if outcome == "waiting" and not run.long_poll:  # else the next task request waits itself
                time.sleep(poll_seconds)
        except grpc.RpcError as exc:
            if exc.code() not in _RETRYABLE or time.monotonic() - run.last_ok > reconnect_seconds:
                raise
            # The aggregator restarted (new keys: our session is void) or is briefly away:
            # verify its new evidence and join again before sending anything else.
            run.say(f"aggregator unavailable or session ended ({exc.code().name}); re-verifying and re-joining")
            time.sleep(1.0)
            try:
                run.join()
            except Exception as again:  # only transient failures are retried
                if not transient(again):
                    raise


class _SiteRun:
    """One site's part in a task: what it has sent and evaluated, its receipts, its kept tree head."""

    vendor_data: Any = None  # fedsite.vendor_eval.EvaluationData: evaluate vendor jobs when the task has some
    checked = False  # the trainer's model was compared with the task's model spec (fedsite.model_check)

    def __init__(
        self,
        client: SiteClient,
        trainer: TorchTrainer,
        *,
        progress: TextIO | None,
        wait: float,
        state: SiteState | None,
    ) -> None:
        self.client, self.trainer, self.wait, self.state = client, trainer, wait, state
        self.summary = SiteRunSummary(client.site_id)
        self.say = _Progress(client.site_id, 0, progress).say
        self.done: set[tuple[int, int]] = set()
        self.evaluated: set[int] = set()
        if state is not None and client.tree_head is None:
            client.tree_head = state.load_tree_head()
        self.kept = client.tree_head
        from fedsite.delivery import ModelKeeper

        self.keeper = ModelKeeper(client, state.directory if state is not None else None, None)
        from fedsite.progress import SiteBars

        self.bars = SiteBars(client.site_id, None, None)  # no bars unless run_site is given a stream
        #: When the aggregator last answered a task request (re-joins are tried for a while after).
        self.last_ok = time.monotonic()
        #: The (round, attempt) this site has sent its update for: the next task request waits
        #: past it (a long poll) when the aggregator holds such requests (``long_poll``).
        self.sent: tuple[int, int] | None = None
        self.long_poll = False

    def join(self) -> None:
        client = self.client
        join_with_retry(client, wait=self.wait, say=self.say)
        self.summary.joins += 1
        from fedsite.cards import publish_after_join  # the dataset card, before any update (docs/intelligence.md)

        publish_after_join(client, self.trainer, self.say)
        # A new aggregator instance keeps only what its sealed checkpoint holds: whatever this
        # site sent to the previous one for an unfinished round must be sent again.
        self.done.clear()
        self.say(
            f"verified the aggregator's evidence and joined (session {client.session.claims.session_id.hex()[:12]}...)"
            if client.session
            else "joined"
        )

    def keep(self) -> None:
        """Keep the newest signed tree head seen (a restarted aggregator must extend it)."""
        if self.state is not None and self.client.tree_head is not None and self.client.tree_head is not self.kept:
            self.state.save_tree_head(self.client.tree_head)
            self.kept = self.client.tree_head

    def report(self, round_number: int, metrics: Metrics, examples: int, max_weight: float) -> None:
        # The admission rule bounds the example count a site may claim; an honest site stays under it.
        try:
            make_card = getattr(self.trainer, "card", None)  # trainers other than TorchTrainer may lack it
            card = make_card() if make_card is not None else None
            if card is not None:  # the card names this site (the one its identity key signs for)
                card = dataclasses.replace(card, site=self.client.site_id)
            self.client.report_metrics(round_number, metrics, int(min(max(0, examples), max_weight)), card)
        except grpc.RpcError as exc:
            if exc.code() not in (
                grpc.StatusCode.FAILED_PRECONDITION,
                grpc.StatusCode.ALREADY_EXISTS,
                grpc.StatusCode.INVALID_ARGUMENT,
            ):
                raise
            self.say(f"round {round_number}: metrics not recorded: {exc.details()}")
            return
        self.summary.metrics[round_number] = metrics

    def evaluate(self, round_number: int, max_weight: float, *, final: bool = False) -> Metrics:
        assert self.trainer.evaluate is not None
        metrics, examples = self.trainer.evaluate(self.trainer.model)
        recalibrate = getattr(self.trainer, "recalibrate", None)  # trainers other than TorchTrainer may lack it
        if final and recalibrate is not None:
            metrics = {**metrics, **recalibrate(self.trainer.model)}
        self.report(round_number, metrics, examples, max_weight)
        return metrics

    def step(self) -> str:
        """One look at the task: ``"finished"`` (the final model evaluated), ``"waiting"`` (this
        round's update was sent), or ``"trained"`` (an update was sent now)."""
        client, trainer = self.client, self.trainer
        task = client.task(after=self.sent)
        self.long_poll = bool(task.waits)
        self.keep()
        if task.vendor_jobs and self.vendor_data is not None:
            from fedsite.vendor_eval import run_vendor_jobs

            for job_id in run_vendor_jobs(client, self.vendor_data):
                self.say(f"vendor job {job_id[:12]}: evaluated in memory, metrics sealed to the aggregator")
        spec = ModelSpec.from_json(task.model_spec)
        if not self.checked:  # the trainer's model is the task's, before anything is downloaded or trained
            from fedsite.model_check import check_trainer_model

            check_trainer_model(trainer, spec, subset=bool(getattr(task, "adapter_base_sha256", b"")))
            self.checked = True
        max_weight = task.max_weight or 1.0
        self.last_ok = time.monotonic()
        if task.finished:
            if task.deliver and not task.release_to_sites:  # the release policy names other recipients
                self.say("training finished; the final model is released to its owner, not to sites")
                return "finished"
            if task.round not in self.evaluated and (trainer.evaluate is not None or task.deliver):
                self.receive_final(task, spec, max_weight)
            return "finished"
        key = (task.round, task.attempt)
        if key in self.done:
            return "waiting"
        if task.adapter_base_sha256:  # an adapter task: train only on the pinned frozen base (fedsite.adapters)
            from fedsite.adapters import check_trainer_base

            check_trainer_base(trainer, task.adapter_base_sha256)
        global_model = self.download(task, spec)
        trainer.set(global_model)
        if task.evaluate and trainer.evaluate is not None and task.round not in self.evaluated:
            self.evaluate(task.round, max_weight)
            self.evaluated.add(task.round)
        with self.bars.training(task.round, task.rounds_total):
            examples = trainer.train(trainer.model)
        local = trainer.get()
        delta = {name: local[name] - global_model[name] for name in global_model}
        self.upload(task, delta, min(float(max(1, int(examples))), max_weight))
        self.done.add(key)
        self.sent = key
        return "trained"

    def download(self, task: Any, spec: ModelSpec) -> dict[str, np.ndarray]:
        """The round's model (digest checked; kept on disk with deliver = "every-round")."""
        from fedsite.delivery import decode

        data = self.keeper.fetch(task, spec)
        self.keeper.keep(task, data)
        return decode(data, spec)

    def receive_final(self, task: Any, spec: ModelSpec, max_weight: float) -> None:
        """The final model: written as final-model.safetensors with its digest, then evaluated."""
        final = self.download(task, spec)
        self.evaluated.add(task.round)
        if self.keeper.final_path is not None:
            self.summary.final_model, self.summary.final_model_sha256 = self.keeper.final_path, self.keeper.final_sha256
            self.say(f"final model written to {self.keeper.final_path} (SHA-256 {self.keeper.final_sha256})")
        if self.trainer.evaluate is not None:
            self.trainer.set(final)
            self.say(f"final model (round {task.round}): {_fmt(self.evaluate(task.round, max_weight, final=True))}")

    def upload(self, task: Any, delta: dict[str, np.ndarray], weight: float) -> None:
        try:
            size = sum(int(array.nbytes) for array in delta.values())
            with self.bars.transfer(size, f"[{self.client.site_id}] update of round {task.round}") as on_chunk:
                receipt = self.client.upload_update(
                    task.round, delta, weight=weight, attempt=task.attempt, on_chunk=on_chunk
                )
        except grpc.RpcError as exc:
            if exc.code() not in (grpc.StatusCode.ALREADY_EXISTS, grpc.StatusCode.FAILED_PRECONDITION):
                raise
            self.say(f"round {task.round}: {exc.details()}")
            return
        self.summary.receipts.append(receipt)
        if self.state is not None:
            self.state.append_receipt(receipt)
        self.summary.rounds_trained.append(task.round)
        evaluated = self.summary.metrics.get(task.round)  # round r's model: the one before its training
        self.say(
            f"round {task.round}/{task.rounds_total}: "
            + (f"its model {_fmt(evaluated)}; " if evaluated else "")
            + f"update sealed and accepted (receipt {receipt.update_sha256.hex()[:12]}...)"
        )


def _fmt(metrics: Metrics) -> str:
    return ", ".join(f"{k}={v:.4f}" for k, v in sorted(metrics.items()))


__all__ = ["AdmissionRefused", "AggregatorNotTrusted", "SiteRunSummary", "TorchTrainer", "run_site"]
