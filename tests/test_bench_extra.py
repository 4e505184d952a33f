"""The ``bench`` extra installs beside attestfl: it pins Flower and NVIDIA FLARE releases whose
protobuf and grpcio ranges overlap attestfl's (the generated wire code runs on protobuf 5.27.2 to
7.x). Their ranges are those the releases declare (checked against the installed flwr's metadata;
nvflare's as PyPI's metadata for 2.9.0 states it). That pip resolves ``.[bench]`` for a fresh venv
was checked by hand (``pip install -e '.[bench]' --dry-run --ignore-installed``: 96 packages, flwr
1.41.0, nvflare 2.9.0, protobuf 6.33.6); it needs the package index, which tests do not."""

from __future__ import annotations

import tomllib
from importlib import metadata
from pathlib import Path

from packaging.requirements import Requirement
from packaging.specifiers import SpecifierSet
from packaging.version import Version

ROOT = Path(__file__).resolve().parents[1]
PROJECT = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]
#: What each pinned release declares for protobuf and grpcio (its Requires-Dist).
DECLARED = {
    ("flwr", "1.41.0"): {"protobuf": ">=5.28.0,<7.0.0", "grpcio": ">=1.70.0,<2.0.0"},
    ("nvflare", "2.9.0"): {"protobuf": ">=4.24.4", "grpcio": ">=1.62.1"},
}
#: Released versions to look for a common one among (protobuf 5.x/6.x/7.x, grpcio 1.x).
CANDIDATES = {
    "protobuf": [f"{major}.{minor}.0" for major in (5, 6, 7) for minor in range(26, 40)],
    "grpcio": [f"1.{minor}.0" for minor in range(60, 90)],
}


def ours(name: str) -> SpecifierSet:
    return next(Requirement(d).specifier for d in PROJECT["dependencies"] if Requirement(d).name == name)


def bench_pins() -> dict[str, str]:
    pins = {}
    for text in PROJECT["optional-dependencies"]["bench"]:
        requirement = Requirement(text)
        if requirement.name in ("flwr", "nvflare"):
            (spec,) = requirement.specifier
            assert spec.operator == "==", f"the bench extra must pin {requirement.name} exactly: {text}"
            pins[requirement.name] = spec.version
    return pins


def test_the_bench_extra_pins_flower_and_flare_releases_whose_ranges_overlap_ours() -> None:
    pins = bench_pins()
    assert set(pins) == {"flwr", "nvflare"}
    for package in ("protobuf", "grpcio"):
        together = ours(package)
        for name, version in pins.items():
            declared = DECLARED.get((name, version))
            assert declared is not None, f"record what {name}=={version} declares for protobuf and grpcio"
            together &= SpecifierSet(declared[package])
        common = [v for v in CANDIDATES[package] if Version(v) in together]
        assert common, f"no {package} satisfies attestfl ({ours(package)}) and {pins} together"
    assert Version(metadata.version("protobuf")) in ours("protobuf")


def test_the_recorded_flower_ranges_are_the_installed_releases() -> None:
    installed = metadata.version("flwr")  # the test extra installs it
    assert installed == bench_pins()["flwr"]
    requires = {Requirement(d).name: str(Requirement(d).specifier) for d in metadata.requires("flwr") or []}
    for package, specifier in DECLARED[("flwr", installed)].items():
        assert SpecifierSet(requires[package]) == SpecifierSet(specifier)
