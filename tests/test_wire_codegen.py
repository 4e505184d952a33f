"""The committed gRPC code is exactly what the .proto files generate with the pinned generator
(grpcio-tools 1.67.1, the test extra's pin: its code runs on protobuf 5.27.2 to 7.x)."""

from __future__ import annotations

import shutil
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
PROTOS = ("federation", "health")


def test_generated_code_matches_the_protos(tmp_path: Path) -> None:
    (tmp_path / "protocol" / "wire").mkdir(parents=True)
    for proto in PROTOS:
        shutil.copy(ROOT / f"protocol/wire/{proto}.proto", tmp_path / f"protocol/wire/{proto}.proto")
        subprocess.run(
            [
                sys.executable,
                "-m",
                "grpc_tools.protoc",
                "-I.",
                "--python_out=.",
                "--grpc_python_out=.",
                f"protocol/wire/{proto}.proto",
            ],
            cwd=tmp_path,
            check=True,
            capture_output=True,
            timeout=120,
        )
        for name in (f"{proto}_pb2.py", f"{proto}_pb2_grpc.py"):
            assert (tmp_path / "protocol/wire" / name).read_text() == (ROOT / "protocol/wire" / name).read_text(), (
                f"protocol/wire/{name} is stale: regenerate it (see the comment at the top of {proto}.proto)"
            )


def test_generated_code_supports_the_declared_protobuf_range() -> None:
    """The gencode's version is the floor of pyproject's protobuf range, and no newer."""
    import re
    import tomllib

    declared = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]["dependencies"]
    protobuf = next(d for d in declared if d.startswith("protobuf"))
    floor = re.search(r">=([\d.]+)", protobuf).group(1)
    for proto in PROTOS:
        gencode = re.search(
            r"# Protobuf Python Version: ([\d.]+)", (ROOT / f"protocol/wire/{proto}_pb2.py").read_text()
        ).group(1)
        assert gencode == floor, (proto, gencode, protobuf)
