"""``attestfl demo --scenario vendors``: two AI vendors' breast-cancer models compared on three
hospitals' data, neither side seeing the other's asset (docs/vendor-evaluation.md).

The Wisconsin breast-cancer data (scikit-learn) is split: 40 % stands in for the vendors' own
training data, the rest is divided unevenly among three hospitals as their patients. Vendor
``acme`` trains a logistic regression on every feature, vendor ``globex`` a small MLP on the ten
"mean" features only. Each vendor appraises the attested aggregator, submits its model sealed to
it, the aggregator re-seals it to each hospital's attested enclave, the hospitals evaluate in
memory (metrics by tumour-size subgroup too) and only metrics leave. The network's comparative
report (JSON + HTML) is written to the demo directory; each vendor receives only its own row.
Everything runs on loopback in simulated TEEs (which prove nothing about hardware).
"""

from __future__ import annotations

import argparse
import json
import sys
import tempfile
import time
from collections.abc import Callable
from pathlib import Path
from typing import TYPE_CHECKING, Any, TextIO

import numpy as np

if TYPE_CHECKING:
    from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

    from attestfl.loopback import Deployment

Say = Callable[[str], None]

ENTRY = "fedsite.vendor_models:mlp"
HOSPITALS = ("st-mary", "general", "riverside")
VENDOR_SHARE = 0.4


def _data(seed: int = 11) -> tuple[tuple[np.ndarray, np.ndarray], list[tuple[np.ndarray, np.ndarray]]]:
    from sklearn.datasets import load_breast_cancer

    x, y = load_breast_cancer(return_X_y=True)
    x = ((x - x.mean(axis=0)) / (x.std(axis=0) + 1e-8)).astype(np.float32)
    y = y.astype(np.int64)
    rng = np.random.default_rng(seed)
    order = rng.permutation(len(y))
    cut = int(VENDOR_SHARE * len(y))
    vendor, hospital = order[:cut], order[cut:]
    shares = np.cumsum([0.5, 0.35])  # uneven hospital sizes
    parts = np.split(hospital, (shares * len(hospital)).astype(int))
    return (x[vendor], y[vendor]), [(x[p], y[p]) for p in parts]


def _softmax(z: np.ndarray) -> np.ndarray:
    z = z - z.max(axis=1, keepdims=True)
    e = np.exp(z)
    return e / e.sum(axis=1, keepdims=True)


def train_logistic(x: np.ndarray, y: np.ndarray, steps: int = 300, lr: float = 0.5) -> dict[str, np.ndarray]:
    """Vendor acme: multinomial logistic regression by full-batch gradient descent."""
    w = np.zeros((2, x.shape[1]))
    b = np.zeros(2)
    target = np.eye(2)[y]
    for _ in range(steps):
        grad = (_softmax(x @ w.T + b) - target) / len(y)
        w -= lr * (grad.T @ x + 1e-3 * w)
        b -= lr * grad.sum(axis=0)
    return {"layers.0.weight": w.astype(np.float32), "layers.0.bias": b.astype(np.float32)}


def train_mlp(
    x: np.ndarray, y: np.ndarray, features: int = 10, hidden: int = 8, steps: int = 400, lr: float = 0.3
) -> dict[str, np.ndarray]:
    """Vendor globex: a one-hidden-layer MLP that looks at the first ``features`` features only
    (its first layer's other weights are zero)."""
    rng = np.random.default_rng(5)
    w1 = rng.normal(scale=0.3, size=(hidden, features))
    b1 = np.zeros(hidden)
    w2 = rng.normal(scale=0.3, size=(2, hidden))
    b2 = np.zeros(2)
    xs = x[:, :features]
    target = np.eye(2)[y]
    for _ in range(steps):
        h = np.maximum(xs @ w1.T + b1, 0.0)
        grad = (_softmax(h @ w2.T + b2) - target) / len(y)
        grad_h = (grad @ w2) * (h > 0)
        w2 -= lr * grad.T @ h
        b2 -= lr * grad.sum(axis=0)
        w1 -= lr * grad_h.T @ xs
        b1 -= lr * grad_h.sum(axis=0)
    full = np.zeros((hidden, x.shape[1]))
    full[:, :features] = w1
    return {
        "layers.0.weight": full.astype(np.float32),
        "layers.0.bias": b1.astype(np.float32),
        "layers.1.weight": w2.astype(np.float32),
        "layers.1.bias": b2.astype(np.float32),
    }


def _task_toml(public_keys: dict[str, str]) -> str:
    """The aggregator's [task]: one round of vendor evaluation at the hospitals, the vendors' keys."""
    key_lines = "\n".join(f'{name} = "{key}"' for name, key in public_keys.items())
    return (
        "rounds = 1\n[task.vendors]\n"
        f"sites = {json.dumps(list(HOSPITALS))}\nmin_examples = 20\nbootstrap = 200\n"
        'vendor_metrics = ["accuracy", "auroc"]\nreport_dir = "vendor-reports"\n'
        f"[task.vendors.keys]\n{key_lines}\n"
    )


def _submit_models(
    deployment: Deployment, target: str, models: dict[str, bytes], keys: dict[str, Ed25519PrivateKey], say: Say
) -> dict[str, str]:
    """Each vendor attests the aggregator and submits its model sealed to it: vendor -> job id."""
    from attestfl.vendor import VendorClient

    jobs = {}
    for name, model in models.items():
        with VendorClient(target, vendor=name, signing_key=keys[name], policy=deployment.site_policy()) as vendor:
            jobs[name] = vendor.submit(model, name=f"{name}-breast-v1", entry_point=ENTRY)
        say(f"  vendor {name}: aggregator attested, {len(model)}-byte model sealed to it (job {jobs[name][:12]})")
    return jobs


def _evaluate_at_hospitals(
    deployment: Deployment, target: str, hospitals: list[tuple[np.ndarray, np.ndarray]], say: Say
) -> None:
    """Each hospital joins and evaluates the sealed models in its enclave, by tumour size too."""
    from fedsite.vendor_eval import EvaluationData, run_vendor_jobs

    for site, (x, y) in zip(HOSPITALS, hospitals, strict=True):
        size = np.where(x[:, 0] > 0, "large", "small")  # mean radius above the population mean
        with deployment.client(target, site_id=site) as client:
            client.join()
            done = run_vendor_jobs(client, EvaluationData(x, y, {"size": size}))
        say(f"  hospital {site}: evaluated {len(done)} sealed models in its enclave on {len(y)} patients")


def _vendor_reports(
    deployment: Deployment, target: str, jobs: dict[str, str], keys: dict[str, Ed25519PrivateKey]
) -> dict[str, Any]:
    """Each vendor's own row of the report: vendor -> row."""
    from attestfl.vendor import VendorClient

    rows = {}
    for name in jobs:
        with VendorClient(target, vendor=name, signing_key=keys[name], policy=deployment.site_policy()) as vendor:
            rows[name] = vendor.wait_report(jobs[name], timeout=30)
    return rows


def _say_report(say: Say, network: Any, rows: dict[str, Any], directory: Path, elapsed: float) -> None:
    """The network's comparative table, what each vendor received, where the files are."""
    from aggregator.vendor_reports import table_text

    say("")
    say("Comparative report for the hospital network (95 % bootstrap intervals):")
    say(table_text(network))
    say("")
    for name, row in rows.items():
        pooled = ", ".join(f"{k} {v:.3f}" for k, v in row["pooled"]["metrics"].items())
        say(f"  vendor {name} received only its own row: pooled {pooled} over {row['pooled']['sites']} hospitals")
    report_dir = directory / "vendor-reports"
    say(f"  report: {report_dir / 'network-report.html'} (and .json); audit log: {directory / 'audit-log'}")
    say(f"  done in {elapsed:.1f} s")


def run_vendors_demo(
    directory: Path | None = None, *, json_output: bool = False, out: TextIO = sys.stdout, err: TextIO = sys.stderr
) -> int:
    from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

    from attestfl.loopback import Deployment
    from attestfl.vendor import public_key
    from protocol.tensors import encode_tensors

    started = time.monotonic()
    directory = Path(directory) if directory else Path(tempfile.mkdtemp(prefix="attestfl-vendors-"))
    directory.mkdir(parents=True, exist_ok=True)
    stream = err if json_output else out

    def say(text: str) -> None:
        line = f"[{time.monotonic() - started:5.1f}s] {text}" if text.startswith("  ") else text
        print(line, file=stream, flush=True)

    (x_vendor, y_vendor), hospitals = _data()
    half = len(y_vendor) // 2
    models = {
        "acme": encode_tensors(train_logistic(x_vendor[:half], y_vendor[:half])),
        "globex": encode_tensors(train_mlp(x_vendor[half:], y_vendor[half:])),
    }
    keys = {name: Ed25519PrivateKey.generate() for name in models}
    deployment = Deployment(
        directory,
        directory / "simulated-vendor",
        model={"placeholder": np.zeros(1, np.float32)},
        sites={site: "" for site in HOSPITALS},
        task=_task_toml({name: public_key(key).hex() for name, key in keys.items()}),
    )
    say(f"attestfl demo --scenario vendors: 2 vendors, {len(HOSPITALS)} hospitals — in {directory}")
    say("  every party runs in the SIMULATED TEE (software evidence; proves nothing about hardware)")
    aggregator = deployment.start()
    try:
        say(f"  aggregator up on {aggregator.target}; vendors and hospitals pin its measurement")
        jobs = _submit_models(deployment, aggregator.target, models, keys, say)
        _evaluate_at_hospitals(deployment, aggregator.target, hospitals, say)
        rows = _vendor_reports(deployment, aggregator.target, jobs, keys)
    finally:
        aggregator.stop()
    network = json.loads((directory / "vendor-reports" / "network-report.json").read_text())
    elapsed = time.monotonic() - started
    if json_output:
        print(json.dumps({"network": network, "vendors": rows, "seconds": round(elapsed, 1)}), file=out)
        return 0
    _say_report(say, network, rows, directory, elapsed)
    return 0


def run(args: argparse.Namespace) -> int:
    """The ``attestfl demo --scenario vendors`` handler."""
    return run_vendors_demo(getattr(args, "dir", None), json_output=bool(getattr(args, "json", False)))


__all__ = ["run", "run_vendors_demo", "train_logistic", "train_mlp"]
