"""The committed stubs in daemon/upstream/pb/ must be what protos/api.proto generates, and the proto
must keep the seed's contract (package, service, methods, fields)."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]


def test_generated_stubs_match_proto() -> None:
    res = subprocess.run([sys.executable, str(ROOT / "scripts" / "gen_protos.py"), "--check"],
                         capture_output=True, text=True)
    assert res.returncode == 0, res.stderr


def test_proto_keeps_seed_contract() -> None:
    from daemon.upstream.pb import api_pb2

    fd = api_pb2.DESCRIPTOR
    assert fd.package == "behavioral_api.grpc.v1"
    service = fd.services_by_name["BehavioralStreamingApi"]
    assert {m.name for m in service.methods} == {"StreamAudio", "DeepfakeDetection"}
    for m in service.methods:
        assert m.client_streaming and m.server_streaming
        assert m.input_type.name == "AudioStream" and m.output_type.name == "StreamResult"
    fields = {f.name: f.number for f in fd.message_types_by_name["AudioStream"].fields}
    assert fields == {"cid": 1, "x_auth_token": 2, "config": 3, "audio_content": 4}
    result = {f.name: f.number for f in fd.message_types_by_name["InferenceResult"].fields}
    assert result == {"id": 1, "start_time": 2, "end_time": 3, "task": 4, "prediction": 5, "final_label": 6,
                      "embedding": 7, "level": 8}
    assert api_pb2.Level.Value("segment") == 0 and api_pb2.Level.Value("utterance") == 1
    assert api_pb2.AudioEncoding.Value("LINEAR_PCM") == 0


def test_seed_proto_equivalent_to_committed(tmp_path: Path) -> None:
    """protos/api.proto is the seed proto (same text once whitespace is normalised)."""
    seed = ROOT.parent / "shared" / "seeds" / "002_449e6aea04280d99.txt"
    if not seed.exists():
        import pytest

        pytest.skip("seed documents not beside the checkout")
    text = seed.read_text()
    start = text.index('syntax = "proto3";')
    end = text.index("}", text.index("enum Level")) + 1
    norm = lambda s: " ".join(s.split())  # noqa: E731
    assert norm(text[start:end]) == norm((ROOT / "protos" / "api.proto").read_text())
