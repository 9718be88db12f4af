"""Exotel AgentStream (Stream / Voicebot applets), sans-I/O.

Sources: developer.exotel.com/docs/agentstream/websocket-protocol (events connected, start, media,
dtmf and mark (Voicebot only), stop; raw PCM every ~100 ms); developer.exotel.com/docs/agentstream/
stream-voicebot-applet ("Exotel sends the caller's voice data"; sample rate 8000/16000/24000 as a
`?sample-rate=` query parameter; up to 3 custom parameters in the URL query; auth by IP allow-list
or Basic auth `wss://<API_KEY>:<API_TOKEN>@host/path` → `Authorization: Basic …` on the upgrade);
developer.exotel.com/docs/exoml/verbs/stream (ExoML `<StartStream contentType=…>`, default
`audio/x-mulaw;rate=8000`).

Wire (JSON text, snake_case, numbers as decimal strings):
  {"event":"connected"}
  {"event":"start","sequence_number":"1","stream_sid":"MZ…","start":{"stream_sid":"MZ…","call_sid":"CA…",
   "account_sid":"AC…","from":"+91…","to":"+91…","custom_parameters":{…},
   "media_format":{"encoding":"audio/x-raw","sample_rate":"8000","bit_rate":"16"}}}
  {"event":"media","sequence_number":"3","stream_sid":"MZ…","media":{"chunk":"2","timestamp":"200",
   "payload":"<b64 s16le>"}}
  {"event":"dtmf","stream_sid":"MZ…","dtmf":{"digit":"5","duration":"100"}}
  {"event":"mark","stream_sid":"MZ…","mark":{"name":"x"}}    {"event":"stop",…}

Identity: `start.call_sid`. Metadata: stream_sid, account_sid, from, to, `custom_parameters.*` as
`param.<name>`. Leg: media frames carry no track; the one stream (the caller's voice) is named `inbound` (a
`media.track`, if present, is honoured). Audio: raw s16le at `sample_rate` (a string;
8000/16000/24000 accepted), `bit_rate` must be 16; `audio/x-mulaw` 8 kHz (ExoML streams) is
accepted too. Auth: the server checks the Basic credentials of the upgrade; optionally
`expected_param` requires a shared secret in `custom_parameters` (never in metadata).
"""

from __future__ import annotations

from typing import Any

from daemon.ingest.forks.common import Bad, flatten_metadata, get_int
from daemon.ingest.forks.events import CallStart, ForkEvent, LegSpec
from daemon.ingest.forks.jsonstream import StreamEventParser
from daemon.model import AudioFormat, Codec

INGEST = "exotel"
SUPPORTED_RATES = (8000, 16000, 24000)


class ExotelStreamParser(StreamEventParser):
    stream_key = "stream_sid"
    wrong_stream = "wrong_stream_sid"
    l16_name = "s16le"
    ignored = frozenset({"connected"})

    def __init__(self, *, expected_param: tuple[str, str] | None = None, **limits: int) -> None:
        super().__init__(**limits)
        self.expected_param = expected_param

    @property
    def stream_sid(self) -> str:
        return self.stream_id

    def _start(self, msg: dict[str, Any]) -> list[ForkEvent]:
        start, call_id, stream_sid = self._start_object(msg, "call_sid")
        params, skip = self._custom_parameters(start, self.expected_param)
        raw_fmt = start.get("media_format", {})
        fmt = _media_format(raw_fmt) if isinstance(raw_fmt, dict) else None
        if fmt is None:
            raise self._unsupported("media_format", raw_fmt)
        meta: dict[str, str] = {"stream_sid": stream_sid}
        for key in ("account_sid", "from", "to"):
            value = start.get(key)
            if isinstance(value, str):
                meta[key] = value
        meta.update(flatten_metadata(params, "param.", skip=skip))
        self.stream_id, self.fmt = stream_sid, fmt
        self.call = CallStart(call_id, meta, (LegSpec("inbound", fmt),))
        return [self.call]


def _media_format(raw: dict[str, Any]) -> AudioFormat | None:
    try:
        rate = get_int(raw, "sample_rate", default=8000)
        bits = get_int(raw, "bit_rate", default=16)
    except Bad:
        return None
    encoding = raw.get("encoding", "audio/x-raw")
    if isinstance(encoding, str) and encoding.lower().startswith("audio/x-mulaw") and rate == 8000:
        return AudioFormat(Codec.PCMU, 8000)  # ExoML <StartStream contentType="audio/x-mulaw;rate=8000">
    if encoding != "audio/x-raw" or bits != 16 or rate not in SUPPORTED_RATES:
        return None
    return AudioFormat(Codec.L16_LE, rate)
