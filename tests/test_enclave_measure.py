"""The simulated launch measurement covers code, dependency versions and configuration."""

from __future__ import annotations

import shutil

from enclave.measure import MEASURED_PACKAGES, installed_package_dirs, measure


def _copy_packages(tmp_path):
    dirs = {}
    for name, src in installed_package_dirs().items():
        dst = tmp_path / name
        shutil.copytree(src, dst, ignore=shutil.ignore_patterns("__pycache__"))
        dirs[name] = dst
    return dirs


def test_measurement_is_deterministic_and_48_bytes():
    first, second = measure(), measure()
    assert first.digest == second.digest and len(first.digest) == 48
    assert {f.package for f in first.files} == set(MEASURED_PACKAGES)
    assert dict(first.versions)["attestfl"]


def test_measurement_changes_with_configuration():
    assert measure(b"rounds = 3\n").digest != measure(b"rounds = 4\n").digest != measure().digest


def test_measurement_changes_with_one_code_byte(tmp_path):
    dirs = _copy_packages(tmp_path)
    before = measure(package_dirs=dirs)
    assert before.digest == measure().digest  # a faithful copy measures the same
    target = dirs["attestation"] / "policy.py"
    target.write_bytes(target.read_bytes() + b"\n")
    assert measure(package_dirs=dirs).digest != before.digest


def test_measurement_changes_when_a_file_is_added(tmp_path):
    dirs = _copy_packages(tmp_path)
    before = measure(package_dirs=dirs)
    (dirs["native"] / "extra.py").write_text("x = 1\n")
    assert measure(package_dirs=dirs).digest != before.digest
