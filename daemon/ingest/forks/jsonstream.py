"""The shared skeleton of the dialects whose text frames are JSON events named by `"event"` (Telnyx,
Plivo, Exotel, Vonage, Asterisk chan_websocket), and of the Twilio-shaped streams among them
(start / media / dtmf / mark / stop, every message naming its stream).

`JsonEventParser.receive_text` checks the size, decodes, and dispatches through `handlers` (event →
method, filled by each dialect); `ignored` events are dropped silently, any other is a counted
`unknown_event`. A `Bad` raised by a handler is a counted drop, a `Fatal` closes the connection.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from daemon.ingest.forks.common import (
    Bad,
    Fatal,
    ForkParserBase,
    b64_payload,
    dtmf_digit,
    get_obj,
    get_str,
    load_json_object,
    media_track,
    secret_skip,
)
from daemon.ingest.forks.events import CLOSE_UNSUPPORTED_DATA, Audio, Dtmf, ForkEvent, Mark
from daemon.model import AudioFormat, Codec

Handler = Callable[[dict[str, Any]], list[ForkEvent]]


class JsonEventParser(ForkParserBase):
    """Text frames are events dispatched by name; binary frames are not part of the protocol
    (`binary_frame`) unless a dialect overrides `receive_binary`."""

    #: events answered with nothing
    ignored: frozenset[str] = frozenset()

    def __init__(self, **limits: int) -> None:
        super().__init__(**limits)
        self.handlers: dict[str, Handler] = {}

    def decode(self, text: str) -> dict[str, Any]:
        """One text frame → a message (JSON object); `Bad` when it is none."""
        return load_json_object(text)

    def receive_text(self, text: str) -> list[ForkEvent]:
        refused = self._text_refused(text)
        if refused is not None:
            return refused
        try:
            msg = self.decode(text)
            event = msg.get("event")
            if not isinstance(event, str):
                raise Bad("missing_event", "no string 'event'")
            handler = self.handlers.get(event)
            if handler is not None:
                return handler(msg)
            if event in self.ignored:
                return []
            raise Bad("unknown_event", event[:40])
        except Bad as bad:
            return self._problem(bad.reason, bad.detail)
        except Fatal as fatal:
            return self._fatal(fatal.reason, fatal.detail, fatal.close_code)

    def receive_binary(self, data: bytes) -> list[ForkEvent]:
        if self.done:
            return []
        return self._problem("binary_frame", f"{len(data)} bytes")


class StreamEventParser(JsonEventParser):
    """A Twilio-shaped stream: `start` names the call and the stream (`stream_key`), every later
    message may name the stream again and must then name this one (`wrong_stream`); media frames
    carry base64 audio of a `track`. Handlers for media, start, dtmf, mark and stop are wired here;
    a dialect drops the ones its protocol lacks."""

    #: the message field naming the stream, and the problem reason when it names another
    stream_key = "stream_id"
    wrong_stream = "wrong_stream_id"
    #: what odd-length L16 payloads are called in problem details
    l16_name = "L16"

    def __init__(self, **limits: int) -> None:
        super().__init__(**limits)
        self.stream_id = ""
        self.fmt: AudioFormat | None = None
        self.handlers.update(media=self._media, start=self._start, dtmf=self._dtmf, mark=self._mark,
                             stop=self._stop)

    def _start(self, msg: dict[str, Any]) -> list[ForkEvent]:
        raise NotImplementedError

    def _start_object(self, msg: dict[str, Any], call_key: str, *, stream_in_start_first: bool = True
                      ) -> tuple[dict[str, Any], str, str]:
        """(the `start` object, call id, stream id) of a start message; `Fatal("bad_start")` when they
        are missing. The stream id is read from `start` or from the message (which first: per dialect)."""
        if self.call is not None:
            raise Bad("duplicate_start", self.stream_id)
        start = msg.get("start")
        if not isinstance(start, dict):
            raise Fatal("bad_start", "no 'start' object")
        call_id = start.get(call_key)
        key = self.stream_key
        first, second = (start, msg) if stream_in_start_first else (msg, start)
        stream_id = first.get(key, second.get(key, ""))
        if not isinstance(call_id, str) or not call_id or not isinstance(stream_id, str):
            raise Fatal("bad_start", f"start needs {call_key} (and a string {key})")
        return start, call_id, stream_id

    def _custom_parameters(self, start: dict[str, Any], expected: tuple[str, str] | None
                           ) -> tuple[dict[str, Any], frozenset[str]]:
        """`start.custom_parameters` (an object or `Fatal("bad_start")`) and the keys to keep out of the
        metadata (the secret `expected` requires there, see `secret_skip`)."""
        params = start.get("custom_parameters", {})
        if not isinstance(params, dict):
            raise Fatal("bad_start", "custom_parameters is not an object")
        return params, secret_skip(expected, params.get, "custom_parameters.{}")

    @staticmethod
    def _unsupported(what: str, raw: object) -> Fatal:
        return Fatal("unsupported_media_format", f"{what} {raw!r}"[:160], CLOSE_UNSUPPORTED_DATA)

    def _check(self, msg: dict[str, Any], kind: str) -> None:
        if self.call is None:
            raise Bad(f"{kind}_before_start", kind)
        sid = msg.get(self.stream_key)
        if sid is not None and sid != self.stream_id:
            raise Bad(self.wrong_stream, str(sid)[:40])

    def _media(self, msg: dict[str, Any]) -> list[ForkEvent]:
        self._check(msg, "media")
        assert self.fmt is not None
        media = get_obj(msg, "media")
        track = media_track(media)
        payload = b64_payload(media.get("payload"))
        if self.fmt.codec is Codec.L16_LE and len(payload) % 2:
            raise Bad("odd_length", f"{len(payload)} bytes of {self.l16_name}")
        return [Audio(track, payload, self.fmt)]

    def _dtmf(self, msg: dict[str, Any]) -> list[ForkEvent]:
        self._check(msg, "dtmf")
        return [Dtmf("inbound", dtmf_digit(get_obj(msg, "dtmf").get("digit")))]

    def _mark(self, msg: dict[str, Any]) -> list[ForkEvent]:
        self._check(msg, "mark")
        return [Mark(get_str(get_obj(msg, "mark"), "name"))]

    def _stop(self, msg: dict[str, Any]) -> list[ForkEvent]:
        self._check(msg, "stop")
        return self._end("stop")
