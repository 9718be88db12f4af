"""Vonage Voice API websockets (NCCO `connect` → `{"type":"websocket",…}`), sans-I/O.

Sources: developer.vonage.com/voice/voice-api/concepts/websockets; repo mheap/nexmo-developer
_documentation/en/voice/voice-api/guides/websockets.md (first frame text `websocket:connected` with
`content-type` and the NCCO `headers` flattened into it, ≤ 512 B; then binary 20 ms L16 frames:
320 B @ 8 kHz, 640 B @ 16 kHz; `websocket:dtmf` with top-level `digit`/`duration`; the call ends
with the socket); developer.vonage.com/en/voice/voice-api/concepts/websockets (AsyncAPI: binary
16-bit little-endian linear PCM, JSON text events websocket:connected / websocket:cleared /
websocket:notify).

The audio is the **mixed** conversation (Vonage does not split parties): one leg named `mixed`.
Identity: Vonage sends no call id by itself; put one in the NCCO headers. The first of `id_keys`
found in the connected frame is the call id; without one, `fallback_call_id` (e.g. from the URL)
is used, else the connection fails with `missing_identity`. The other headers go to metadata as
`header.<name>`. Auth: a shared secret in the NCCO headers (`expected_header=(name, secret)`,
constant time, never in metadata) or in the URL path the server matches.
"""

from __future__ import annotations

from daemon.ingest.forks.common import Bad, Fatal, dtmf_digit, flatten_metadata, secret_skip
from daemon.ingest.forks.events import (
    CLOSE_POLICY_VIOLATION,
    CLOSE_UNSUPPORTED_DATA,
    Audio,
    CallStart,
    Dtmf,
    ForkEvent,
    LegSpec,
)
from daemon.ingest.forks.jsonstream import JsonEventParser
from daemon.model import AudioFormat, Codec

INGEST = "vonage"
LEG = "mixed"
DEFAULT_ID_KEYS = ("call_uuid", "uuid", "conversation_uuid", "call_id", "callId")
SUPPORTED_RATES = (8000, 16000, 24000)


def l16_content_type(value: object) -> AudioFormat | None:
    """'audio/l16;rate=16000' → L16 little-endian at that rate; None when unsupported."""
    if not isinstance(value, str):
        return None
    base, _, params = value.replace(" ", "").lower().partition(";")
    rate = 0
    for param in params.split(";"):
        name, _, val = param.partition("=")
        if name == "rate" and val.isdigit() and len(val) <= 6:
            rate = int(val)
    if base != "audio/l16" or rate not in SUPPORTED_RATES:
        return None
    return AudioFormat(Codec.L16_LE, rate)


class VonageStreamParser(JsonEventParser):
    #: answers to commands we never send (clear, notify)
    ignored = frozenset({"websocket:cleared", "websocket:notify"})

    def __init__(self, *, id_keys: tuple[str, ...] = DEFAULT_ID_KEYS, fallback_call_id: str | None = None,
                 expected_header: tuple[str, str] | None = None, **limits: int) -> None:
        super().__init__(**limits)
        self.id_keys = id_keys
        self.fallback_call_id = fallback_call_id
        self.expected_header = expected_header
        self.fmt: AudioFormat | None = None
        self.handlers.update({"websocket:connected": self._connected, "websocket:dtmf": self._dtmf})

    def receive_binary(self, data: bytes) -> list[ForkEvent]:
        refused = self._binary_refused(data, started=self.call is not None and self.fmt is not None)
        if refused is not None:
            return refused
        if len(data) % 2:
            return self._problem("odd_length", f"{len(data)} bytes of L16")
        assert self.fmt is not None
        return [Audio(LEG, data, self.fmt)]

    def _dtmf(self, msg: dict[str, object]) -> list[ForkEvent]:
        if self.call is None:
            raise Bad("dtmf_before_start", "dtmf")
        return [Dtmf(LEG, dtmf_digit(msg.get("digit")))]

    def _connected(self, msg: dict[str, object]) -> list[ForkEvent]:
        if self.call is not None:
            raise Bad("duplicate_start", "websocket:connected")
        fmt = l16_content_type(msg.get("content-type"))
        if fmt is None:
            raise Fatal("unsupported_media_format", f"content-type {msg.get('content-type')!r}"[:160],
                        CLOSE_UNSUPPORTED_DATA)
        headers = {k: v for k, v in msg.items() if k not in ("event", "content-type")}
        skip = secret_skip(self.expected_header, headers.get, "header {}")
        call_id = next((v for k in self.id_keys if isinstance(v := headers.get(k), str) and v), None)
        call_id = call_id or self.fallback_call_id
        if not call_id:
            return self._fatal("missing_identity", f"none of {list(self.id_keys)} in the connected frame",
                               CLOSE_POLICY_VIOLATION)
        self.fmt = fmt
        self.call = CallStart(call_id, flatten_metadata(headers, "header.", skip=skip), (LegSpec(LEG, fmt),))
        return [self.call]
