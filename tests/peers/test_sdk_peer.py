"""The official Behavioral Signals SDK (PyPI `behavioralsignals` 0.7.x) as a real peer: its
`Deepfakes.stream_audio()` with its own `make_audio_stream` streams a clip to the simulator, and every
response passes the SDK's own result models. The SDK runs in a subprocess: its generated api_pb2
registers "api.proto" in protobuf's default pool, as ours does. Only the REST auth call of the client's
constructor is bypassed (the sub-client is built without it); the streaming path is untouched."""

from __future__ import annotations

import importlib.util
import json
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest

from tests.conftest import TEST_API_KEY, TEST_CID

# find_spec, not import: importing the SDK here would clash with our stubs in the descriptor pool
pytestmark = pytest.mark.skipif(importlib.util.find_spec("behavioralsignals") is None,
                                reason="the behavioralsignals SDK is not installed")

SCRIPT = textwrap.dedent("""
    import json, sys
    from behavioralsignals.configuration import Configuration
    from behavioralsignals.deepfakes import Deepfakes
    from behavioralsignals.models import StreamingOptions, StreamingResultResponse
    from behavioralsignals.utils import make_audio_stream

    target, cid, key, wav = sys.argv[1:5]
    client = Deepfakes.__new__(Deepfakes)
    client.config = Configuration(cid=cid, api_key=key, streaming_api_url=target, use_ssl=False)
    audio, rate = make_audio_stream(wav, chunk_size=0.25)
    for response in client.stream_audio(audio_stream=audio,
                                        options=StreamingOptions(sample_rate=rate, encoding="LINEAR_PCM", level="all")):
        assert isinstance(response, StreamingResultResponse)
        again = StreamingResultResponse.model_validate(response.model_dump(by_alias=True))
        for item in again.results or []:
            top = {p.label: p.posterior for p in item.prediction or []}
            print(json.dumps({"pid": again.pid, "message_id": again.message_id, "task": item.task,
                              "level": item.level, "label": item.finalLabel, "spoofed": float(top["spoofed"]),
                              "st": item.st, "et": item.et}), flush=True)
""")


def run_sdk(target: str, wav: Path, key: str = TEST_API_KEY) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-W", "ignore", "-c", SCRIPT, target, str(TEST_CID), key, str(wav)],
                          capture_output=True, text=True, timeout=60)


async def test_sdk_streams_to_simulator(simulator: object, marked_clip: Path, clean_clip: Path) -> None:
    import asyncio

    target = simulator.target  # type: ignore[attr-defined]
    marked, clean, wrong = await asyncio.gather(
        asyncio.to_thread(run_sdk, target, marked_clip), asyncio.to_thread(run_sdk, target, clean_clip),
        asyncio.to_thread(run_sdk, target, clean_clip, "wrong-key"))
    assert marked.returncode == 0, marked.stderr
    rows = [json.loads(line) for line in marked.stdout.splitlines()]
    assert {r["level"] for r in rows} == {"segment", "utterance"}
    assert all(r["task"] == "deepfake" and r["label"] == "spoofed" and r["spoofed"] >= 0.9 for r in rows)
    assert [r["message_id"] for r in rows] == list(range(1, len(rows) + 1)) and len({r["pid"] for r in rows}) == 1
    assert clean.returncode == 0, clean.stderr
    rows = [json.loads(line) for line in clean.stdout.splitlines()]
    assert rows and all(r["label"] == "bonafide" and r["spoofed"] <= 0.1 for r in rows)
    assert wrong.returncode != 0 and "UNAUTHENTICATED" in wrong.stderr
