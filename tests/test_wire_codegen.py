"""The committed gRPC code is exactly what the .proto generates (no drift)."""
from __future__ import annotations

import shutil
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
GENERATED = ("federation_pb2.py", "federation_pb2_grpc.py")


def test_generated_code_matches_the_proto(tmp_path: Path) -> None:
    (tmp_path / "protocol" / "wire").mkdir(parents=True)
    shutil.copy(ROOT / "protocol/wire/federation.proto", tmp_path / "protocol/wire/federation.proto")
    subprocess.run(
        [sys.executable, "-m", "grpc_tools.protoc", "-I.", "--python_out=.", "--grpc_python_out=.", "protocol/wire/federation.proto"],
        cwd=tmp_path, check=True, capture_output=True, timeout=120,
    )
    for name in GENERATED:
        assert (tmp_path / "protocol/wire" / name).read_text() == (ROOT / "protocol/wire" / name).read_text(), (
            f"protocol/wire/{name} is stale: regenerate it (see the comment at the top of federation.proto)"
        )
