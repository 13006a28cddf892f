"""The checked-in protocol code is what `proto/comet.proto` generates (not stale)."""

from __future__ import annotations

import shutil
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]
GENERATED = ("comet_pb2.py", "comet_pb2.pyi", "comet_pb2_grpc.py")


def test_generated_code_is_up_to_date(tmp_path) -> None:
    protoc = pytest.importorskip("grpc_tools.protoc")
    (tmp_path / "proto").mkdir()
    shutil.copy(ROOT / "proto" / "comet.proto", tmp_path / "proto" / "comet.proto")
    # The documented command (proto/comet.proto's header), run in a scratch tree.
    args = ["protoc", f"-I{tmp_path}", f"--python_out={tmp_path}", f"--pyi_out={tmp_path}",
            f"--grpc_python_out={tmp_path}", str(tmp_path / "proto" / "comet.proto")]  # fmt: skip
    assert protoc.main(args) == 0
    stale = [
        name
        for name in GENERATED
        if (tmp_path / "proto" / name).read_bytes() != (ROOT / "proto" / name).read_bytes()
    ]
    assert not stale, (
        f"stale generated code {stale}: regenerate with "
        "`python -m grpc_tools.protoc -I. --python_out=. --pyi_out=. --grpc_python_out=. "
        "proto/comet.proto` from the repository root"
    )
