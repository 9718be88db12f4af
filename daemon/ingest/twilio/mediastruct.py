"""The typed shape of a well-formed Twilio `media` message, for the parser's fast path (msgspec).

`decode_media(text)` raises `msgspec.DecodeError` (ValidationError included) for anything that is not
exactly this shape: another event, a missing or mistyped field, bad base64. The parser then reads the
message again with `json.loads` and gives the exact drop reason (protocol.py).
"""

from __future__ import annotations

import msgspec


class MediaBody(msgspec.Struct, gc=False):
    track: str
    chunk: str
    timestamp: str
    payload: bytes  # msgspec decodes base64 (only the alphabet, correct padding, else it raises)


class MediaMessage(msgspec.Struct, gc=False, tag_field="event", tag="media"):
    """The shape of a well-formed `media` message, for the typed fast path (other fields are ignored).
    Every `event` key of the message must say "media" (json.loads keeps the last of duplicate keys)."""

    media: MediaBody
    streamSid: str | None = None  # the wire name


#: One typed decoder for every parser: it fails (and the general path takes over) on anything unusual.
decode_media = msgspec.json.Decoder(MediaMessage).decode
