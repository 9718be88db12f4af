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

from daemon.ingest.forks.common import (
    Bad,
    ForkParserBase,
    dtmf_digit,
    flatten_metadata,
    load_json_object,
    token_matches,
)
from daemon.ingest.forks.events import (
    CLOSE_POLICY_VIOLATION,
    CLOSE_UNSUPPORTED_DATA,
    Audio,
    CallStart,
    Dtmf,
    ForkEvent,
    LegSpec,
)
from daemon.model import AudioFormat, Codec

INGEST = "vonage"
LEG = "mixed"
DEFAULT_ID_KEYS = ("call_uuid", "uuid", "conversation_uuid", "call_id", "callId")
SUPPORTED_RATES = (8000, 16000, 24000)
#: answers to commands we never send (clear, notify): ignored
_IGNORED = frozenset({"websocket:cleared", "websocket:notify"})


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


class VonageStreamParser(ForkParserBase):
    def __init__(self, *, id_keys: tuple[str, ...] = DEFAULT_ID_KEYS, fallback_call_id: str | None = None,
                 expected_header: tuple[str, str] | None = None, **limits: int) -> None:
        super().__init__(**limits)
        self.id_keys = id_keys
        self.fallback_call_id = fallback_call_id
        self.expected_header = expected_header
        self.fmt: AudioFormat | None = None

    def receive_text(self, text: str) -> list[ForkEvent]:
        if self.done:
            return []
        too_big = self._oversize_text(text)
        if too_big is not None:
            return too_big
        try:
            msg = load_json_object(text)
            event = msg.get("event")
            if not isinstance(event, str):
                raise Bad("missing_event", "no string 'event'")
            if event == "websocket:connected":
                return self._connected(msg)
            if event == "websocket:dtmf":
                if self.call is None:
                    raise Bad("dtmf_before_start", "dtmf")
                return [Dtmf(LEG, dtmf_digit(msg.get("digit")))]
            if event in _IGNORED:
                return []
            raise Bad("unknown_event", event[:40])
        except Bad as bad:
            return self._problem(bad.reason, bad.detail)

    def receive_binary(self, data: bytes) -> list[ForkEvent]:
        if self.done:
            return []
        too_big = self._oversize_binary(data)
        if too_big is not None:
            return too_big
        if self.call is None or self.fmt is None:
            return self._problem("audio_before_start", f"{len(data)} bytes")
        if not data:
            return self._problem("empty_payload", "")
        if len(data) % 2:
            return self._problem("odd_length", f"{len(data)} bytes of L16")
        return [Audio(LEG, data, self.fmt)]

    def connection_closed(self) -> list[ForkEvent]:
        if self.done:
            return []
        return self._end("socket_closed")

    def _connected(self, msg: dict[str, object]) -> list[ForkEvent]:
        if self.call is not None:
            raise Bad("duplicate_start", "websocket:connected")
        fmt = l16_content_type(msg.get("content-type"))
        if fmt is None:
            return self._fatal("unsupported_media_format", f"content-type {msg.get('content-type')!r}"[:160],
                               CLOSE_UNSUPPORTED_DATA)
        headers = {k: v for k, v in msg.items() if k not in ("event", "content-type")}
        skip: frozenset[str] = frozenset()
        if self.expected_header is not None:
            key, secret = self.expected_header
            if not token_matches(secret, headers.get(key)):
                return self._unauthorized(f"header {key} missing or wrong")
            skip = frozenset({key})
        call_id = next((v for k in self.id_keys if isinstance(v := headers.get(k), str) and v), None)
        call_id = call_id or self.fallback_call_id
        if not call_id:
            return self._fatal("missing_identity", f"none of {list(self.id_keys)} in the connected frame",
                               CLOSE_POLICY_VIOLATION)
        self.fmt = fmt
        self.call = CallStart(call_id, flatten_metadata(headers, "header.", skip=skip), (LegSpec(LEG, fmt),))
        return [self.call]
