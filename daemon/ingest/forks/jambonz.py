"""jambonz `listen` verb, sans-I/O.

Sources: docs.jambonz.org/verbs/verbs/listen and docs.jambonz.org/docs/webhooks/listen (subprotocol
`audio.jambonz.org`; "one text frame is sent immediately after the websocket connection is
established … all of the call attributes normally sent on an HTTP request (e.g. callSid, etc), plus
sampleRate and mixType … Additional metadata can also be added … using the metadata property";
then only binary 16-bit PCM; `sampleRate` default 8000, also 16000/24000/48000/64000; `mixType`
mono|stereo|mixed; `passDtmf` sends DTMF as JSON text); repo pipecat-ai/pipecat
src/pipecat/serializers/jambonz.py (s16le; DTMF `{"event":"dtmf","dtmf":"5",…}`).

Identity: `callSid`. Metadata: the other call attributes (from, to, direction, accountSid,
applicationSid, callId, customerData, …) and the verb's `metadata`, which jambonz merges into the
same top-level object (feature-server lib/tasks/listen.js: `Object.assign({sampleRate, mixType},
callInfo, this.metadata)`; DTMF sent as `{event:'dtmf', dtmf, duration}`). Legs: mono →
`caller`; mixed → `mixed`; stereo → `caller` (left) and `callee` (right), deinterleaved (stereo is
"dual channels of both calls in a bridge"). Audio before the first text frame is a counted drop
(jambonz always sends the text first). Auth: a shared secret in the verb's `metadata`
(`expected_meta=(name, secret)`, looked up at the top level, constant time, never in metadata), or
the verb's `wsAuth` basic-auth credentials checked by the server on the upgrade.
"""

from __future__ import annotations

from typing import Any

from daemon.ingest.forks.common import (
    Bad,
    Fatal,
    ForkParserBase,
    deinterleave_s16,
    dtmf_digit,
    flatten_metadata,
    get_int,
    load_json_object,
    secret_skip,
)
from daemon.ingest.forks.events import (
    CLOSE_PROTOCOL_ERROR,
    CLOSE_UNSUPPORTED_DATA,
    Audio,
    CallStart,
    Dtmf,
    ForkEvent,
    LegSpec,
)
from daemon.model import AudioFormat, Codec

INGEST = "jambonz"
SUBPROTOCOL = "audio.jambonz.org"
#: jambonz's own SDK docs name mod_audio_fork's default instead; a server should select whichever of
#: these the client offers.
ALTERNATE_SUBPROTOCOLS = ("audio.drachtio.org",)
MIN_RATE, MAX_RATE = 8000, 64000
_LEGS = {"mono": ("caller",), "mixed": ("mixed",), "stereo": ("caller", "callee")}


class JambonzListenParser(ForkParserBase):
    def __init__(self, *, expected_meta: tuple[str, str] | None = None, **limits: int) -> None:
        super().__init__(**limits)
        self.expected_meta = expected_meta
        self.fmt: AudioFormat | None = None
        self.mix_type = "mono"

    def receive_text(self, text: str) -> list[ForkEvent]:
        refused = self._text_refused(text)
        if refused is not None:
            return refused
        try:
            msg = load_json_object(text)
            if self.call is None:
                return self._start(msg)
            event = msg.get("event", msg.get("type"))
            if event == "dtmf":
                digit = msg.get("dtmf", msg.get("digit"))
                return [Dtmf(_LEGS[self.mix_type][0], dtmf_digit(digit))]
            raise Bad("unknown_event", str(event)[:40])
        except Bad as bad:
            if self.call is None and bad.reason in ("invalid_json", "not_object"):
                return self._fatal("bad_start", f"first text frame: {bad.detail}", CLOSE_PROTOCOL_ERROR)
            return self._problem(bad.reason, bad.detail)
        except Fatal as fatal:
            return self._fatal(fatal.reason, fatal.detail, fatal.close_code)

    def receive_binary(self, data: bytes) -> list[ForkEvent]:
        refused = self._binary_refused(data, started=self.call is not None and self.fmt is not None)
        if refused is not None:
            return refused
        assert self.fmt is not None
        align = 4 if self.mix_type == "stereo" else 2
        if len(data) % align:
            return self._problem("misaligned_frame", f"{len(data)} bytes, {self.mix_type}")
        if self.mix_type == "stereo":
            left, right = deinterleave_s16(data)
            return [Audio("caller", left, self.fmt), Audio("callee", right, self.fmt)]
        return [Audio(_LEGS[self.mix_type][0], data, self.fmt)]

    def _start(self, msg: dict[str, Any]) -> list[ForkEvent]:
        call_id = msg.get("callSid")
        if not isinstance(call_id, str) or not call_id:
            return self._fatal("bad_start", "first text frame has no callSid")
        try:
            rate = get_int(msg, "sampleRate", default=8000)
        except Bad:
            rate = -1
        mix = msg.get("mixType", "mono")
        if not MIN_RATE <= rate <= MAX_RATE or mix not in _LEGS:
            return self._fatal("unsupported_media_format", f"sampleRate {msg.get('sampleRate')!r} "
                               f"mixType {mix!r}"[:160], CLOSE_UNSUPPORTED_DATA)
        # jambonz builds this frame as Object.assign({sampleRate, mixType}, callInfo, verb.metadata):
        # the verb's metadata is merged at the top level (a nested "metadata" object is honoured too).
        nested = msg.get("metadata")
        nested = nested if isinstance(nested, dict) else {}
        skip = secret_skip(self.expected_meta, lambda key: msg.get(key, nested.get(key)), "metadata {}")
        attrs = {k: v for k, v in msg.items() if k not in ("callSid", "metadata", "sampleRate", "mixType")}
        meta = {"mix_type": str(mix), **flatten_metadata(attrs, skip=skip),
                **flatten_metadata(nested, "meta.", skip=skip)}
        self.mix_type = str(mix)
        self.fmt = AudioFormat(Codec.L16_LE, rate)
        self.call = CallStart(call_id, meta, tuple(LegSpec(n, self.fmt) for n in _LEGS[self.mix_type]))
        return [self.call]
