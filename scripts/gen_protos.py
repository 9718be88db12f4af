"""Generate the committed gRPC stubs in daemon/upstream/pb/ from protos/api.proto.

Run `python scripts/gen_protos.py` after editing the proto; `--check` exits 1 when the
committed stubs differ from what the proto generates (tests/unit/test_proto_drift.py runs it).
The generated `api_pb2_grpc.py` imports `api_pb2` as a top-level module; it is rewritten to
a relative import so the stubs live inside the `daemon` package.
"""

from __future__ import annotations

import argparse
import sys
import tempfile
from pathlib import Path

from grpc_tools import protoc

ROOT = Path(__file__).resolve().parent.parent
PROTO_DIR = ROOT / "protos"
OUT_DIR = ROOT / "daemon" / "upstream" / "pb"
FILES = ("api_pb2.py", "api_pb2.pyi", "api_pb2_grpc.py")


def generate(into: Path) -> dict[str, bytes]:
    args = [
        "protoc",
        f"--proto_path={PROTO_DIR}",
        f"--python_out={into}",
        f"--pyi_out={into}",
        f"--grpc_python_out={into}",
        str(PROTO_DIR / "api.proto"),
    ]
    if protoc.main(args) != 0:
        raise SystemExit("protoc failed")
    out = {name: (into / name).read_bytes() for name in FILES}
    out["api_pb2_grpc.py"] = out["api_pb2_grpc.py"].replace(
        b"import api_pb2 as api__pb2", b"from . import api_pb2 as api__pb2"
    )
    return out


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--check", action="store_true", help="compare instead of writing")
    opts = parser.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        fresh = generate(Path(tmp))
    if opts.check:
        stale = [n for n, data in fresh.items() if (OUT_DIR / n).read_bytes() != data]
        if stale:
            print(f"stubs drifted from protos/api.proto: {', '.join(stale)}; "
                  "run `python scripts/gen_protos.py`", file=sys.stderr)
            return 1
        return 0
    for name, data in fresh.items():
        (OUT_DIR / name).write_bytes(data)
    return 0


if __name__ == "__main__":
    sys.exit(main())
