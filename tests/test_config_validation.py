"""aggregator.toml is checked whole when it is loaded: strict types, finite numbers, durations
longer than zero, addresses parsed as host:port, bounded counts, paths as strings. Each
test writes a real file and asserts the one-line message: the file, the table and key, what
is allowed, and the value that was given."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from aggregator.config import AggregatorConfig
from aggregator.rounds import MAX_ROUNDS, MAX_SITES, DpConfig, TaskConfig, TaskConfigError
from aggregator.strategies import Krum, StrategyError, TrimmedMean, make_strategy
from protocol.config import ConfigError, Endpoint, parse_endpoint
from protocol.tensors import encode_tensors

AGGREGATOR = {"listen": '"127.0.0.1:0"', "tee": '"simulated-snp"', "simulated_dir": '"sim"'}
TASK = {"initial_model": '"model.safetensors"'}


def write(
    directory: Path, aggregator: dict[str, str] | None = None, task: dict[str, str] | None = None, extra: str = ""
) -> Path:
    """aggregator.toml in ``directory`` with the valid defaults above, overridden per key (None
    drops a key), and ``extra`` appended verbatim."""
    (directory / "model.safetensors").write_bytes(encode_tensors({"w": np.zeros(4, np.float32)}))

    def table(name: str, defaults: dict[str, str], overrides: dict[str, str] | None) -> str:
        values = {**defaults, **(overrides or {})}
        return f"[{name}]\n" + "".join(f"{k} = {v}\n" for k, v in values.items() if v is not None)

    path = directory / "aggregator.toml"
    path.write_text(table("aggregator", AGGREGATOR, aggregator) + "\n" + table("task", TASK, task) + extra)
    return path


def refused(path: Path) -> str:
    with pytest.raises(ConfigError) as caught:
        AggregatorConfig.load(path)
    message = str(caught.value)
    assert "\n" not in message and message.startswith(f"{path}: "), message
    return message.removeprefix(f"{path}: ")


def test_a_valid_file_loads_with_its_values(tmp_path: Path) -> None:
    config = AggregatorConfig.load(
        write(
            tmp_path,
            {"listen": '"[::1]:0"', "metrics_listen": '"127.0.0.1:9464"', "stall_timeout": '"2m"'},
            {
                "rounds": "7",
                "min_sites": "1",
                "round_deadline": "90",
                "clip_norm": "5",
                "evaluate": "false",
                "strategy": '"trimmed_mean"',
                "trimmed_mean_beta": "0",
            },
            "[task.dp]\nclip_norm = 1\nnoise_multiplier = 0.5\n",
        )
    )
    assert config.listen == "[::1]:0" and config.listen_endpoint == Endpoint("::1", 0)
    assert config.metrics_endpoint == Endpoint("127.0.0.1", 9464) and config.stall_timeout == 120.0
    task = config.task
    assert (task.rounds, task.min_sites, task.round_deadline, task.clip_norm, task.evaluate) == (7, 1, 90.0, 5.0, False)
    assert task.strategy == TrimmedMean(0.0) and task.dp == DpConfig(1.0, 0.5, 1e-5)
    assert isinstance(task.clip_norm, float) and isinstance(task.dp.clip_norm, float)  # an integer is taken as a float


def test_defaults(tmp_path: Path) -> None:
    config = AggregatorConfig.load(write(tmp_path, {"listen": None}))
    assert config.listen == "127.0.0.1:7443" and config.metrics_listen == "" and config.metrics_endpoint is None
    assert (
        config.stall_timeout == 30.0
        and config.log_dir == tmp_path / "audit-log"
        and config.state_dir == tmp_path / "state"
    )
    assert (config.task.rounds, config.task.min_sites, config.task.round_deadline, config.task.evaluate) == (
        5,
        1,
        120.0,
        True,
    )


# ---- strict types: no coercion ------------------------------------------------------------------


@pytest.mark.parametrize(
    ("task", "message"),
    [
        ({"rounds": '"5"'}, '[task] rounds: expected an integer from 1 to 100000, got "5"'),
        ({"rounds": "5.0"}, "[task] rounds: expected an integer from 1 to 100000, got 5.0"),
        ({"rounds": "true"}, "[task] rounds: expected an integer from 1 to 100000, got true"),
        ({"rounds": "2020-01-01"}, "[task] rounds: expected an integer from 1 to 100000, got 2020-01-01"),
        ({"min_sites": '"3"'}, '[task] min_sites: expected an integer from 1 to 10000, got "3"'),
        ({"krum_f": '"1"'}, '[task] krum_f: expected an integer from 0 to 10000, got "1"'),
        ({"krum_m": "1.5"}, "[task] krum_m: expected an integer from 1 to 10000, got 1.5"),
        ({"trimmed_mean_beta": '"0.2"'}, '[task] trimmed_mean_beta: expected a finite number in [0, 0.5), got "0.2"'),
        ({"clip_norm": "true"}, "[task] clip_norm: expected a finite number > 0, got true"),
        (
            {"strategy": '"mean"'},
            '[task] strategy: expected one of "fedavg", "krum", "median", "trimmed_mean", got "mean"',
        ),
        ({"dp": "5"}, "[task] dp: expected a table, got 5"),
    ],
)
def test_strings_are_not_coerced_to_numbers(tmp_path: Path, task: dict[str, str], message: str) -> None:
    assert refused(write(tmp_path, task=task)) == message


@pytest.mark.parametrize("value", ['"no"', '"false"', "0", "1", '"true"'])
def test_bool_is_only_true_or_false(tmp_path: Path, value: str) -> None:
    assert refused(write(tmp_path, task={"evaluate": value})) == f"[task] evaluate: expected true or false, got {value}"


# ---- finite floats ------------------------------------------------------------------------------


@pytest.mark.parametrize("value", ["nan", "inf", "-inf", "0.0", "-1.0"])
def test_clip_norm_must_be_finite_and_positive(tmp_path: Path, value: str) -> None:
    assert (
        refused(write(tmp_path, task={"clip_norm": value}))
        == f"[task] clip_norm: expected a finite number > 0, got {value}"
    )


@pytest.mark.parametrize(
    ("dp", "message"),
    [
        ("clip_norm = nan\nnoise_multiplier = 1.0", "[task.dp] clip_norm: expected a finite number > 0, got nan"),
        (
            "clip_norm = 1.0\nnoise_multiplier = inf",
            "[task.dp] noise_multiplier: expected a finite number > 0, got inf",
        ),
        (
            "clip_norm = 1.0\nnoise_multiplier = 1.0\ndelta = 1.0",
            "[task.dp] delta: expected a finite number in (0, 1), got 1.0",
        ),
        (
            "clip_norm = 1.0\nnoise_multiplier = 1.0\ndelta = nan",
            "[task.dp] delta: expected a finite number in (0, 1), got nan",
        ),
        ("clip_norm = 1.0", "[task.dp] noise_multiplier: required: a finite number > 0"),
        ('clip_norm = "1"\nnoise_multiplier = 1.0', '[task.dp] clip_norm: expected a finite number > 0, got "1"'),
    ],
)
def test_dp_values(tmp_path: Path, dp: str, message: str) -> None:
    assert refused(write(tmp_path, extra=f"[task.dp]\n{dp}\n")) == message


@pytest.mark.parametrize(("value", "shown"), [("0.5", "0.5"), ("-0.1", "-0.1"), ("nan", "nan"), ("inf", "inf")])
def test_trimmed_mean_beta_in_zero_to_a_half(tmp_path: Path, value: str, shown: str) -> None:
    message = refused(write(tmp_path, task={"strategy": '"trimmed_mean"', "trimmed_mean_beta": value}))
    assert message == f"[task] trimmed_mean_beta: expected a finite number in [0, 0.5), got {shown}"


# ---- durations: zero and negative are errors, not defaults -----------------------------------------


@pytest.mark.parametrize(
    ("key", "value", "message"),
    [
        ("round_deadline", '"0s"', 'expected a duration longer than zero and at most 7d, got "0s"'),
        ("round_deadline", "0", "expected a duration longer than zero and at most 7d, got 0"),
        ("round_deadline", "-5", "expected a duration longer than zero and at most 7d, got -5"),
        ("round_deadline", '"8d"', 'expected a duration longer than zero and at most 7d, got "8d"'),
        (
            "round_deadline",
            "1.5",
            'expected a duration longer than zero: seconds (an integer) or a string like "90s", "15m", '
            '"2h", "1d", got 1.5',
        ),
        (
            "round_deadline",
            '"99999999999999999999d"',
            "expected a duration longer than zero: seconds (an integer) or a string "
            'like "90s", "15m", "2h", "1d", got "99999999999999999999d"',
        ),
        (
            "round_deadline",
            '"soon"',
            'expected a duration longer than zero: seconds (an integer) or a string like "90s", '
            '"15m", "2h", "1d", got "soon"',
        ),
    ],
)
def test_task_durations(tmp_path: Path, key: str, value: str, message: str) -> None:
    assert refused(write(tmp_path, task={key: value})) == f"[task] {key}: {message}"


@pytest.mark.parametrize("value", ['"0s"', "0", "-1", '"0m"'])
def test_zero_stall_timeout_is_an_error_not_the_default(tmp_path: Path, value: str) -> None:
    message = refused(write(tmp_path, {"stall_timeout": value}))
    assert message == f"[aggregator] stall_timeout: expected a duration longer than zero and at most 7d, got {value}"


# ---- addresses ----------------------------------------------------------------------------------

LISTEN = 'expected host:port with a port from 0 to 65535 (an IPv6 address in brackets, like "[::1]:7443")'
METRICS = 'expected host:port with a port from 1 to 65535 (an IPv6 address in brackets, like "[::1]:7443")'


@pytest.mark.parametrize(
    ("value", "reason"),
    [
        ('"0.0.0.0:65536"', "port 65536 is out of range"),
        ('"0.0.0.0:70000"', "port 70000 is out of range"),
        ('"0.0.0.0:-1"', "not host:port"),
        ('"0.0.0.0"', "not host:port"),
        ('"localhost"', "not host:port"),
        ('"::1:7443"', "an IPv6 address goes in brackets"),
        ('"[::g]:7443"', "[::g] is not an IPv6 address"),
        ('"999.1.1.1:7443"', "999.1.1.1 is not an IPv4 address"),
        ('"bad host:7443"', "the host is neither an IP address nor a DNS name"),
        ('"http://0.0.0.0:7443"', "not host:port (a URL scheme is not allowed)"),
        ('"unix:/run/attestfl.sock"', "not host:port"),
        ('":7443"', "the host is missing"),
        ('"0.0.0.0:7443 "', "not host:port"),
    ],
)
def test_listen_is_parsed_at_load(tmp_path: Path, value: str, reason: str) -> None:
    assert refused(write(tmp_path, {"listen": value})) == f"[aggregator] listen: {LISTEN}, got {value}: {reason}"


def test_listen_must_be_a_string(tmp_path: Path) -> None:
    assert (
        refused(write(tmp_path, {"listen": "7443"}))
        == '[aggregator] listen: expected host:port, like "0.0.0.0:7443" or "[::]:7443" '
        "(port 0: any free port), got 7443"
    )


@pytest.mark.parametrize(
    ("value", "reason"),
    [
        ('"127.0.0.1:0"', "port 0 is out of range"),
        ('"127.0.0.1:65536"', "port 65536 is out of range"),
        ('"9464"', "not host:port"),
    ],
)
def test_metrics_listen_is_parsed_at_load_and_port_zero_is_refused(tmp_path: Path, value: str, reason: str) -> None:
    assert (
        refused(write(tmp_path, {"metrics_listen": value}))
        == f"[aggregator] metrics_listen: {METRICS}, got {value}: {reason}"
    )


@pytest.mark.parametrize(
    ("listen", "metrics", "endpoint"),
    [
        ('"[::1]:7443"', '"[::1]:9464"', Endpoint("::1", 9464)),
        ('"0.0.0.0:7443"', '":9464"', Endpoint("127.0.0.1", 9464)),  # no host: loopback
        ('"aggregator.example.org:7443"', '"localhost:9464"', Endpoint("localhost", 9464)),
        ('"[::]:0"', '""', None),
    ],
)
def test_accepted_addresses(tmp_path: Path, listen: str, metrics: str, endpoint: Endpoint | None) -> None:
    config = AggregatorConfig.load(write(tmp_path, {"listen": listen, "metrics_listen": metrics}))
    assert config.listen == listen.strip('"') and config.metrics_endpoint == endpoint


def test_metrics_and_grpc_cannot_share_a_port(tmp_path: Path) -> None:
    message = refused(write(tmp_path, {"listen": '"0.0.0.0:9464"', "metrics_listen": '"127.0.0.1:9464"'}))
    assert message == "[aggregator] metrics_listen: port 9464 is the gRPC port of listen; use another port"


def test_parse_endpoint() -> None:
    assert parse_endpoint("[fe80::1%eth0]:1") == Endpoint("fe80::1%eth0", 1)
    assert str(parse_endpoint("[::1]:7443")) == "[::1]:7443" and parse_endpoint("[::1]:7443").is_loopback
    assert not parse_endpoint("0.0.0.0:1").is_loopback and parse_endpoint("0.0.0.0:1").is_wildcard
    with pytest.raises(ValueError, match="out of range"):
        parse_endpoint("127.0.0.1:0")
    assert parse_endpoint("127.0.0.1:0", allow_port_zero=True).port == 0


# ---- bounds -------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("task", "message"),
    [
        ({"rounds": "0"}, f"[task] rounds: expected an integer from 1 to {MAX_ROUNDS}, got 0"),
        (
            {"rounds": str(MAX_ROUNDS + 1)},
            f"[task] rounds: expected an integer from 1 to {MAX_ROUNDS}, got {MAX_ROUNDS + 1}",
        ),
        ({"rounds": "-3"}, f"[task] rounds: expected an integer from 1 to {MAX_ROUNDS}, got -3"),
        ({"min_sites": "0"}, f"[task] min_sites: expected an integer from 1 to {MAX_SITES}, got 0"),
        (
            {"min_sites": str(MAX_SITES + 1)},
            f"[task] min_sites: expected an integer from 1 to {MAX_SITES}, got {MAX_SITES + 1}",
        ),
        ({"krum_f": "-1"}, f"[task] krum_f: expected an integer from 0 to {MAX_SITES}, got -1"),
        ({"krum_m": "0"}, f"[task] krum_m: expected an integer from 1 to {MAX_SITES}, got 0"),
        (
            {"strategy": '"krum"', "min_sites": "4"},
            "[task] min_sites: strategy krum (f = 1, m = 1) needs at least 5 sites per round; min_sites is 4",
        ),
        # multi-Krum averages m of the n-f best updates: m <= min_sites - f
        (
            {"strategy": '"krum"', "krum_m": "5", "min_sites": "5"},
            "[task] min_sites: strategy krum (f = 1, m = 5) needs at least 6 sites per round; min_sites is 5",
        ),
    ],
)
def test_counts_are_bounded(tmp_path: Path, task: dict[str, str], message: str) -> None:
    assert refused(write(tmp_path, task=task)) == message


# ---- paths, choices, unknown keys -----------------------------------------------------------------


@pytest.mark.parametrize(
    ("aggregator", "task", "message"),
    [
        ({"log_dir": "5"}, None, "[aggregator] log_dir: expected a path (a non-empty string), got 5"),
        ({"state_dir": '""'}, None, '[aggregator] state_dir: expected a path (a non-empty string), got ""'),
        (
            {"state_dir": '"a\\u0000b"'},
            None,
            '[aggregator] state_dir: expected a path (a non-empty string), got "a\\u0000b"',
        ),
        ({"simulated_dir": "true"}, None, "[aggregator] simulated_dir: expected a path (a non-empty string), got true"),
        (
            None,
            {"initial_model": '["model.safetensors"]'},
            '[task] initial_model: expected a path to a safetensors file of float32 tensors, got ["model.safetensors"]',
        ),
        (
            None,
            {"initial_model": None},
            "[task] initial_model: required: a path to a safetensors file of float32 tensors",
        ),
        ({"state_dir": '"audit-log"'}, None, '[aggregator] state_dir: must differ from log_dir, got "audit-log"'),
        ({"simulated_dir": None}, None, "[aggregator] simulated_dir: required for a simulated TEE (a path)"),
    ],
)
def test_paths_are_strings(tmp_path: Path, aggregator: dict | None, task: dict | None, message: str) -> None:
    assert refused(write(tmp_path, aggregator, task)) == message


def test_a_missing_model_names_the_key(tmp_path: Path) -> None:
    message = refused(write(tmp_path, task={"initial_model": '"missing.safetensors"'}))
    assert (
        message
        == f"[task] initial_model: cannot read model file {tmp_path / 'missing.safetensors'}: No such file or directory"
    )


def test_choices(tmp_path: Path) -> None:
    assert (
        refused(write(tmp_path, {"tee": '"sgx"'}))
        == '[aggregator] tee: expected one of "auto", "sev-snp", "simulated-snp", "simulated-tdx", "tdx", got "sgx"'
    )
    assert (
        refused(write(tmp_path, {"gpu": '"cuda"'}))
        == '[aggregator] gpu: expected one of "auto", "none", "nvml", "simulated", got "cuda"'
    )


def test_unknown_keys_list_the_allowed_ones(tmp_path: Path) -> None:
    assert refused(write(tmp_path, task={"roundz": "3", "evaluat": "true"})) == (
        "[task]: unknown key(s) evaluat, roundz; allowed: initial_model, rounds, min_sites, round_deadline, strategy, "
        "trimmed_mean_beta, krum_f, krum_m, clip_norm, evaluate, dp, vendors, mode, buffer_size, max_staleness, "
        "compression, deliver, release, drift, contribution, cards, adapters"
    )
    assert refused(write(tmp_path, {"listn": '"127.0.0.1:1"'})) == (
        "[aggregator]: unknown key(s) listn; allowed: listen, tee, simulated_dir, gpu, metrics_listen, log_dir, "
        "state_dir, "
        "stall_timeout, upload_memory_bytes, spool_dir, handshake_rate_per_ip, handshake_burst_per_ip"
    )
    assert (
        refused(write(tmp_path, extra="[task.dp]\nclip_norm = 1.0\nnoise_multiplier = 1.0\nepsilon = 3\n"))
        == "[task.dp]: unknown key(s) epsilon; allowed: clip_norm, noise_multiplier, delta"
    )
    assert (
        refused(write(tmp_path, extra="[tasks]\nrounds = 1\n"))
        == "unknown table(s) tasks; allowed: [aggregator], [admission], [task], [parent]"
    )


def test_tables_must_be_tables(tmp_path: Path) -> None:
    path = tmp_path / "aggregator.toml"
    path.write_text('aggregator = "x"\n')
    assert refused(path) == '[aggregator]: expected a table, got "x"'


# ---- TaskConfig made in code is checked the same way ----------------------------------------------

MODEL = {"w": np.zeros(4, np.float32)}


@pytest.mark.parametrize(
    ("fields", "message"),
    [
        ({"rounds": "5"}, '[task] rounds: expected an integer from 1 to 100000, got "5"'),
        ({"rounds": True}, "[task] rounds: expected an integer from 1 to 100000, got true"),
        ({"evaluate": "no"}, '[task] evaluate: expected true or false, got "no"'),
        (
            {"round_deadline": 0.0},
            "[task] round_deadline: expected a duration longer than zero and at most 7d, got 0.0",
        ),
        (
            {"round_deadline": float("inf")},
            "[task] round_deadline: expected a duration longer than zero and at most 7d, got inf",
        ),
        ({"clip_norm": float("nan")}, "[task] clip_norm: expected a finite number > 0, got nan"),
        ({"dp": DpConfig(float("nan"), 1.0, 1e-5)}, "[task.dp] clip_norm: expected a finite number > 0, got nan"),
        ({"dp": DpConfig(1.0, 1.0, 0.0)}, "[task.dp] delta: expected a finite number in (0, 1), got 0.0"),
        ({"initial_model": {}}, "[task] initial_model: model spec: 1 to 4096 tensors expected"),
    ],
)
def test_task_config_made_in_code_is_validated(fields: dict, message: str) -> None:
    with pytest.raises(TaskConfigError) as caught:
        TaskConfig(**{"initial_model": MODEL, **fields}).validate()
    assert str(caught.value) == message


def test_strategy_parameters_are_not_coerced() -> None:
    for bad in ({"beta": float("nan")}, {"beta": "0.2"}, {"beta": True}, {"beta": 0.5}):
        with pytest.raises(StrategyError):
            make_strategy("trimmed_mean", **bad)
    for bad in ({"f": "1"}, {"f": 1.5}, {"m": True}, {"f": -1}, {"m": 0}):
        with pytest.raises(StrategyError):
            make_strategy("krum", **bad)
    assert Krum(f=1, m=3).minimum_sites() == 5 and Krum(f=1, m=5).minimum_sites() == 6
