"""Regenerate the checked-in Python stubs: ``python -m protos.generate``.

The stubs are committed so a Pi installs without grpcio-tools; a test regenerates them
into a temporary folder and fails if they differ from what is checked in.
"""

from __future__ import annotations

import sys
from pathlib import Path

PROTO_FILES = ("lightning.proto", "router.proto", "invoices.proto")
ROOT = Path(__file__).resolve().parent.parent


def generate(out_dir: Path) -> None:
    from grpc_tools import protoc

    out_dir.mkdir(parents=True, exist_ok=True)
    for name in PROTO_FILES:
        status = protoc.main(
            [
                "grpc_tools.protoc",
                f"-I{ROOT}",
                f"--python_out={out_dir}",
                f"--pyi_out={out_dir}",
                f"--grpc_python_out={out_dir}",
                f"protos/{name}",
            ]
        )
        if status != 0:
            raise RuntimeError(f"protoc failed on {name} with status {status}")


if __name__ == "__main__":
    generate(ROOT)
    sys.exit(0)
