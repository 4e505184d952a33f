"""``attestfl demo``: one attested aggregator and N hospital sites, each in its own process and
its own (simulated) TEE, training a small torch model on the Wisconsin breast-cancer data that
ships with scikit-learn, split non-IID across the sites; plus one rogue site whose evidence
carries a tampered measurement, refused with its reasons.

Everything runs over gRPC on loopback. The simulated TEE proves nothing about hardware; the
demo's policies trust its simulated vendor root explicitly, which no production policy does.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import textwrap
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import IO, Any, TextIO

import numpy as np

from attestfl.intelligence import FEATURE_NAMES, cards_task_toml, print_intelligence, summarise_intelligence
from attestfl.loopback import Deployment, read_events
from attestfl.scenarios import RUNNERS, SCENARIOS, Scenario, load_scenario

ROGUE_SITE = "rogue-clinic"
HIDDEN = 16
FEATURES = 30


# --- the site side: data and trainer ---------------------------------------------------------


def make_model(seed: int = 0) -> Any:
    import torch
    from torch import nn

    torch.manual_seed(seed)
    return nn.Sequential(nn.Linear(FEATURES, HIDDEN), nn.ReLU(), nn.Linear(HIDDEN, 2))


def export_state_dict(module: Any, path: str | Path) -> Path:
    """Write a torch module's state_dict as float32 safetensors (the task's initial model)."""
    from protocol.tensors import encode_tensors

    tensors = {name: t.detach().cpu().numpy().astype(np.float32) for name, t in module.state_dict().items()}
    path = Path(path)
    path.write_bytes(encode_tensors(tensors))
    return path


def breast_cancer_trainer(data: dict[str, Any], base_dir: Path) -> Any:
    """The demo's trainer factory (``[data] trainer = "attestfl.demo:breast_cancer_trainer"``):
    local SGD epochs on the site's split, accuracy and loss on its held-out split."""
    import torch
    from torch import nn

    from fedsite.cards import make_card
    from fedsite.risk import torch_evaluator, torch_recalibrator
    from fedsite.sdk import TorchTrainer

    arrays = np.load(base_dir / str(data["file"]))
    x_train = torch.from_numpy(arrays["x_train"]).float()
    y_train = torch.from_numpy(arrays["y_train"]).long()
    x_test = torch.from_numpy(arrays["x_test"]).float()
    y_test = torch.from_numpy(arrays["y_test"]).long()
    epochs = int(data.get("epochs", 3))
    lr = float(data.get("lr", 0.05))
    generator = torch.Generator().manual_seed(int(data.get("seed", 0)))
    torch.set_num_threads(1)

    def train(model: Any) -> int:
        model.train()
        optimiser = torch.optim.SGD(model.parameters(), lr=lr, momentum=0.9)
        loss_fn = nn.CrossEntropyLoss()
        for _ in range(epochs):
            order = torch.randperm(len(x_train), generator=generator)
            for start in range(0, len(order), 16):
                batch = order[start : start + 16]
                optimiser.zero_grad()
                loss_fn(model(x_train[batch]), y_train[batch]).backward()
                optimiser.step()
        return len(x_train)

    # The fixed metric set (accuracy, AUROC, loss, ECE), per tumour-size band too (fedsite/risk.py).
    bands = {"radius": np.where(arrays["x_test"][:, 0] < 0, "small", "large")}
    card = make_card("", arrays["x_train"], arrays["y_train"], FEATURE_NAMES)  # the SDK names the site
    return TorchTrainer(
        make_model(),
        train,
        torch_evaluator(x_test, y_test, bands),
        recalibrate=torch_recalibrator(x_test, y_test),
        card=lambda: card,
    )


def split_non_iid(sites: int, seed: int = 7) -> tuple[list[dict[str, np.ndarray]], np.ndarray, np.ndarray]:
    """Different sizes and class balances per site (Dirichlet over each class), each with a
    held-out test split. Features are standardised with the public dataset's statistics."""
    from sklearn.datasets import load_breast_cancer

    x, y = load_breast_cancer(return_X_y=True)
    mean, std = x.mean(axis=0), x.std(axis=0) + 1e-8
    x = ((x - mean) / std).astype(np.float32)
    rng = np.random.default_rng(seed)
    assignment = np.empty(len(y), dtype=int)
    for label in (0, 1):
        members = np.flatnonzero(y == label)
        rng.shuffle(members)
        shares = rng.dirichlet(np.full(sites, 2.0))
        cuts = (np.cumsum(shares)[:-1] * len(members)).astype(int)
        for site, part in enumerate(np.split(members, cuts)):
            assignment[part] = site
    splits = []
    for site in range(sites):
        members = np.flatnonzero(assignment == site)
        rng.shuffle(members)
        cut = max(1, int(0.75 * len(members)))
        train, test = members[:cut], members[cut:]
        splits.append(
            {
                "x_train": x[train],
                "y_train": y[train].astype(np.int64),
                "x_test": x[test],
                "y_test": y[test].astype(np.int64),
            }
        )
    return splits, mean, std


# --- the launcher ------------------------------------------------------------------------------


@dataclass
class DemoResult:
    summary: dict[str, Any]
    directory: Path
    exit_code: int


def _site_ids(count: int) -> list[str]:
    return [f"hospital-{chr(ord('a') + i)}" if i < 26 else f"hospital-{i}" for i in range(count)]


def summarise(events: list[dict[str, Any]], rounds: int, audit_log: Path) -> dict[str, Any]:
    """The demo's JSON summary, from the aggregator's own records."""
    metrics: dict[int, dict[str, dict[str, float]]] = {}
    examples: dict[int, dict[str, int]] = {}
    epsilon: dict[int, float | None] = {}
    for event in events:
        if event["message"] == "metrics":
            metrics.setdefault(event["round"], {})[event["site"]] = event["metrics"]
            examples.setdefault(event["round"], {})[event["site"]] = event["examples"]
        elif event["message"] == "round":
            epsilon[event["round"]] = event.get("epsilon")
    rows = []
    for r in range(1, rounds + 2):
        # round r's model is the one before its training (round 1: the initial model; rounds + 1: the final
        # model), as in serve's table, the site's metrics.csv and the audit log's metrics entries
        per_site = {site: m["accuracy"] for site, m in metrics.get(r, {}).items() if "accuracy" in m}
        weights = examples.get(r, {})
        total = sum(weights.get(site, 0) for site in per_site)
        accuracy = sum(per_site[s] * weights.get(s, 0) for s in per_site) / total if total else None
        rows.append({"round": r, "accuracy": accuracy, "per_site": per_site, "epsilon": epsilon.get(r)})
    refused = [
        {"site": e["site"], "reasons": e["reasons"]}
        for e in events
        if e["message"] == "admission" and not e["admitted"]
    ]
    return {
        "final_accuracy": rows[-1]["accuracy"] if rows else None,
        "rounds": rows,
        "refused": refused,
        "audit_log": str(audit_log),
        "intelligence": summarise_intelligence(events, rounds),
    }


#: The modules ``attestfl demo`` runs with: the site's (torch, scikit-learn, tqdm, tenacity) and
#: the aggregator's (numba, dp-accounting, prometheus-client).
DEMO_EXTRA_MODULES = ("torch", "sklearn", "tqdm", "tenacity", "numba", "llvmlite", "dp_accounting", "prometheus_client")


def run_demo(
    sites: int = 4,
    rounds: int = 5,
    strategy: str = "fedavg",
    *,
    directory: Path | None = None,
    json_output: bool = False,
    out: TextIO = sys.stdout,
    err: TextIO = sys.stderr,
    dp: bool = False,
    timeout: float = 600.0,
    scenario: str | None = None,
) -> DemoResult:
    chosen = load_scenario(scenario) if scenario else None
    if sites < 1 or rounds < 1:
        raise ValueError("--sites and --rounds must be at least 1")
    # Absolute: the sites are enrolled and run with this directory as their working directory.
    directory = Path(directory).resolve() if directory else Path(tempfile.mkdtemp(prefix="attestfl-demo-"))
    directory.mkdir(parents=True, exist_ok=True)
    stream = err if json_output else out

    def say(text: str) -> None:
        print(text, file=stream, flush=True)

    splits, _mean, _std = split_non_iid(sites)
    model = {name: t.detach().numpy().astype(np.float32) for name, t in make_model().state_dict().items()}
    port = _free_port()
    deployment = Deployment(
        directory,
        directory / "simulated-vendor",
        model=model,
        task=_task_toml(sites, rounds, strategy, dp) + (chosen.task if chosen else ""),
        listen=f"127.0.0.1:{port}",
    )
    central_dp = ", central DP" if dp else ""
    say(f"attestfl demo: {sites} sites, {rounds} rounds, strategy {strategy}{central_dp} — in {directory}")
    say(
        "  every party runs in the SIMULATED TEE (software evidence in the real SEV-SNP format; proves nothing about "
        "hardware)"
    )
    configs = _enrol_sites(deployment, splits, f"127.0.0.1:{port}", say, chosen)
    measurement = _write_aggregator_policy(deployment)
    aggregator = deployment.start()
    processes: list[tuple[str, subprocess.Popen[bytes], IO[bytes]]] = []
    try:
        say(f"  aggregator up on {aggregator.target}, measurement {measurement[:24]}... (pinned by every site)")
        processes = _start_sites(configs, directory)
        _follow(aggregator.stderr_path, rounds, processes, say, json_output, timeout)
    finally:
        _stop_sites(processes)
        aggregator.stop()
    return _report(read_events(aggregator.stderr_path), rounds, deployment, processes, json_output, out, say)


def _task_toml(sites: int, rounds: int, strategy: str, dp: bool) -> str:
    """The ``[task]`` table: every honest site takes part in every round."""
    task = textwrap.dedent(f"""\
        rounds = {rounds}
        min_sites = {sites}
        round_deadline = "120s"
        [task.strategy]
        name = "{strategy}"
        """)
    if strategy == "krum":
        task += f"f = {max(0, (sites - 3) // 2)}\n"
    if dp:
        task += "[task.dp]\nclip_norm = 1.0\nnoise_multiplier = 0.5\ndelta = 1e-5\n"
    return task + cards_task_toml(FEATURE_NAMES)  # every site's dataset card must match the schema


def _enrol_sites(
    deployment: Deployment,
    splits: list[dict[str, np.ndarray]],
    target: str,
    say: Callable[[str], None],
    scenario: Scenario | None = None,
) -> dict[str, Path]:
    """Each site's data and site.toml (the rogue one with a tampered measurement); each site creates
    its identity key inside its (simulated) TEE, and the operator pins the public keys with the
    code's measurement in the site's admission rule. Returns site id -> site.toml."""
    from enclave.measure import measure

    directory = deployment.directory
    site_measurement = measure().digest  # what an honest site's simulated TEE measures: the installed code
    everyone = _site_ids(len(splits)) + [ROGUE_SITE]
    configs = {}
    for index, site_id in enumerate(everyone):
        split = _split_of(splits, index)
        np.savez(
            directory / f"{site_id}.npz",
            x_train=split["x_train"],
            y_train=split["y_train"],
            x_test=split["x_test"],
            y_test=split["y_test"],
        )
        configs[site_id] = _write_site_config(
            directory, site_id, index, target, rogue=site_id == ROGUE_SITE, scenario=scenario, honest=everyone[:-1]
        )
    enrolled = _enroll(configs, directory)
    for index, site_id in enumerate(everyone):
        examples = len(_split_of(splits, index)["y_train"])
        deployment.sites[site_id] = (
            f'measurements = ["{site_measurement.hex()}"]\n'
            f'identity_keys = ["{enrolled[site_id]}"]\nmax_weight = {examples}'
        )
    say(
        f"  {len(enrolled)} sites enrolled identity keys (sealed by their TEEs); the operator pinned each in its "
        "admission rule"
    )
    return configs


def _split_of(splits: list[dict[str, np.ndarray]], index: int) -> dict[str, np.ndarray]:
    """Site ``index``'s data; the rogue site (one past the honest ones) copies the first site's."""
    return splits[index] if index < len(splits) else splits[0]


def _write_aggregator_policy(deployment: Deployment) -> str:
    """The sites' policy for the aggregator: its simulated vendor root and its exact measurement (hex)."""
    from attestation.platforms.snp import NAME as SNP

    measurement: str = deployment.measurement().hex()
    roots = ", ".join(f'"{fp}"' for fp in deployment.roots.values())
    (deployment.directory / "aggregator-policy.toml").write_text(
        f"# The sites' policy for the aggregator: its simulated vendor root and its exact measurement.\n"
        f'trusted_simulated_roots = [{roots}]\nplatforms = ["{SNP}"]\n[{SNP}]\nmeasurement = ["{measurement}"]\n'
    )
    return measurement


def _start_sites(configs: dict[str, Path], directory: Path) -> list[tuple[str, subprocess.Popen[bytes], IO[bytes]]]:
    """``attestfl site run`` for every site, each in its own process, its output in ``<site>.log``."""
    processes: list[tuple[str, subprocess.Popen[bytes], IO[bytes]]] = []
    for site_id, config in configs.items():
        log = (directory / f"{site_id}.log").open("wb")
        process = subprocess.Popen(
            [sys.executable, "-m", "attestfl.cli", "site", "run", "--config", str(config), "--quiet"],
            stdout=log,
            stderr=subprocess.STDOUT,
            cwd=directory,
            env=dict(os.environ, PYTHONUNBUFFERED="1"),
        )
        processes.append((site_id, process, log))
    return processes


def _stop_sites(processes: list[tuple[str, subprocess.Popen[bytes], IO[bytes]]]) -> None:
    for _site, process, log in processes:
        if process.poll() is None:
            process.terminate()
        try:
            process.wait(timeout=10)
        except subprocess.TimeoutExpired:
            process.kill()
        log.close()


def _report(
    events: list[dict[str, Any]],
    rounds: int,
    deployment: Deployment,
    processes: list[tuple[str, subprocess.Popen[bytes], IO[bytes]]],
    json_output: bool,
    out: TextIO,
    say: Callable[[str], None],
) -> DemoResult:
    """The summary (JSON or a table) from the aggregator's own records; exit 0 when training
    finished and every honest site finished."""
    summary = summarise(events, rounds, deployment.directory / "audit-log")
    honest_failed = [s for s, p, _ in processes if s != ROGUE_SITE and p.returncode != 0]
    if json_output:
        print(json.dumps(summary), file=out)
    else:
        _print_table(summary, say)
    if honest_failed:
        say(f"  sites that did not finish: {', '.join(honest_failed)} (see their logs in {deployment.directory})")
    finished = any(e["message"] == "training_finished" for e in events)
    return DemoResult(summary, deployment.directory, 0 if finished and not honest_failed else 1)


def _free_port() -> int:
    import socket

    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return int(probe.getsockname()[1])


def _write_site_config(
    directory: Path,
    site_id: str,
    index: int,
    target: str,
    *,
    rogue: bool,
    scenario: Scenario | None = None,
    honest: list[str] | None = None,
) -> Path:
    config = directory / f"{site_id}.toml"
    tampered = f'simulated_measurement = "{os.urandom(48).hex()}"  # tampered: not the code that runs' if rogue else ""
    trainer = scenario.trainer if scenario else "attestfl.demo:breast_cancer_trainer"
    extra = scenario.site_data(site_id, honest or []) if scenario and scenario.site_data and not rogue else ""
    config.write_text(
        textwrap.dedent(f"""\
        [site]
        id = "{site_id}"
        aggregator = "{target}"
        tee = "simulated-snp"
        simulated_dir = "simulated-vendor"
        policy = "aggregator-policy.toml"
        identity = "{site_id}.identity.sealed"
        state_dir = "{site_id}-state"
        {tampered}

        [data]
        trainer = "{trainer}"
        file = "{site_id}.npz"
        seed = {index}
        """)
        + (extra + "\n" if extra else "")
    )
    return config


def _enroll(configs: dict[str, Path], directory: Path) -> dict[str, str]:
    """``attestfl site enroll`` for every site (in parallel, as each hospital would): site -> public key (hex)."""
    running = {
        site: subprocess.Popen(
            [sys.executable, "-m", "attestfl.cli", "site", "enroll", "--config", str(path), "--json", "--replace"],
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            cwd=directory,
        )
        for site, path in configs.items()
    }
    keys = {}
    for site, process in running.items():
        stdout, stderr = process.communicate(timeout=120)
        if process.returncode != 0:
            raise RuntimeError(f"attestfl site enroll failed for {site}: {stderr.decode(errors='replace').strip()}")
        keys[site] = json.loads(stdout)["identity_key"]
    return keys


def _follow(stderr_path: Path, rounds: int, processes: list, say: Any, json_output: bool, timeout: float) -> None:
    from tqdm import tqdm

    seen_rounds: set[int] = set()
    reported_refusals: set[str] = set()
    started = time.time()
    with tqdm(total=rounds, desc="training rounds", unit="round", file=sys.stderr, leave=False) as bar:
        while time.time() - started < timeout:
            events = read_events(stderr_path)
            for event in events:
                if event["message"] == "admission" and not event["admitted"] and event["site"] not in reported_refusals:
                    reported_refusals.add(event["site"])
                    tqdm.write(
                        f"  REFUSED {event['site']}: " + "; ".join(event["reasons"]),
                        file=sys.stderr if json_output else sys.stdout,
                    )
                if event["message"] == "round" and event["round"] not in seen_rounds:
                    seen_rounds.add(event["round"])
                    bar.update(1)
            honest = [p for s, p, _ in processes if s != ROGUE_SITE]
            if all(p.poll() is not None for p in honest):
                return
            time.sleep(0.2)
    say(f"  timed out after {timeout:.0f} s")


def _print_table(summary: dict[str, Any], say: Any) -> None:
    if "intelligence" in summary:  # risk first: the worst site and the largest subgroup gap, then the mean
        print_intelligence(summary["intelligence"], say)
    say("")
    sites = sorted({s for row in summary["rounds"] for s in row["per_site"]})
    header = (
        f"{'round':>5}  {'global acc':>10}  "
        + "  ".join(f"{s:>12}" for s in sites)
        + ("  epsilon" if any(r["epsilon"] is not None for r in summary["rounds"]) else "")
    )
    say(header)
    for row in summary["rounds"]:
        acc = f"{row['accuracy']:.4f}" if row["accuracy"] is not None else "-"
        cells = "  ".join(f"{row['per_site'].get(s, float('nan')):>12.4f}" for s in sites)
        eps = f"  {row['epsilon']:.3f}" if row["epsilon"] is not None else ""
        eps = eps or ("  -    " if "epsilon" in header else "")
        final = "  final model" if row is summary["rounds"][-1] else ""
        say(f"{row['round']:>5}  {acc:>10}  {cells}{eps}{final}")
    for refusal in summary["refused"]:
        say(f"refused: {refusal['site']}")
        for reason in refusal["reasons"]:
            say(f"  - {reason}")
    final = summary["final_accuracy"]
    say(f"final global accuracy: {final:.4f}" if final is not None else "final global accuracy: unavailable")
    say(f"audit log: {summary['audit_log']}")
    policy = Path(summary["audit_log"]).parent / "aggregator-policy.toml"
    say(f"verify it: attestfl audit verify {summary['audit_log']} --policy {policy}")
    say(
        "  (that policy trusts this demo's simulated vendor root and pins the aggregator's measurement: the verdict "
        "is SIMULATED; under the default policy it is AUTHENTIC, NOT TRUSTED BY YOUR POLICY, exit 4; "
        "see docs/auditors.md)"
    )


def _at_least_one(text: str) -> int:
    value = int(text)
    if value < 1:
        raise argparse.ArgumentTypeError(f"must be at least 1, got {value}")
    return value


def add_demo_command(subparsers: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    demo = subparsers.add_parser(
        "demo",
        help="run an attested federation on loopback (simulated TEEs)",
        description="Start one aggregator and N sites in simulated TEEs as separate processes, "
        "train a small torch model on scikit-learn's breast-cancer data split non-IID, refuse a "
        "rogue site, print per-round accuracy. Needs the demo extra: pip install "
        "'attestfl[demo]'.",
    )
    demo.add_argument("--sites", type=_at_least_one, help="honest sites (default 4, or the scenario's)")
    demo.add_argument("--rounds", type=_at_least_one, default=5, help="training rounds (default 5)")
    demo.add_argument("--strategy", default="fedavg", choices=("fedavg", "median", "trimmed_mean", "krum"))
    demo.add_argument("--dp", action="store_true", help="central differential privacy inside the aggregator")
    demo.add_argument(
        "--dir", type=Path, help="where to write configs, logs and the audit log (default: a new temporary directory)"
    )
    demo.add_argument("--json", action="store_true", help="print one JSON summary object")
    demo.add_argument(
        "--scenario",
        choices=sorted({*SCENARIOS, *RUNNERS}),
        help="a variant of the demo (attestfl/scenarios/): drift surveillance, the vendor comparison, ...",
    )
    demo.set_defaults(handler=_run_demo_command)


def _run_demo_command(args: argparse.Namespace) -> int:
    from attestation.errors import ExtraNotInstalled

    ExtraNotInstalled.check("demo", "attestfl demo", DEMO_EXTRA_MODULES)
    if args.scenario in RUNNERS:
        import importlib

        module, function = RUNNERS[args.scenario].split(":")
        return int(getattr(importlib.import_module(module), function)(args))
    sites = args.sites or (load_scenario(args.scenario).sites if args.scenario else 4)
    return run_demo(
        sites, args.rounds, args.strategy, directory=args.dir, json_output=args.json, dp=args.dp, scenario=args.scenario
    ).exit_code
