"""Genesys Cloud AudioHook protocol v2 (server side), sans-I/O.

Sources: repo purecloudlabs/audiohook-reference-implementation: app/audiohook/src/protocol/message.ts
and core.ts (message shapes; media `{type:"audio",format:"PCMU"|"L16",channels:["external","internal"],
rate:8000}`), app/audiohook/src/server/serversessionimpl.ts (client `seq` must be previous+1,
`serverseq` must not exceed ours, `id` must match the session, text > 64 KiB rejected, binary only
once media is selected; errors answered with `disconnect{reason:"error"}`); developer.genesys.cloud
/devapps/audiohook (connection probe: `conversationId` all zeros; stereo = external left, internal
right); digest /work/shared/docs/ingest-protocols.md §5.

Every text message: {"version":"2","id":<session>,"type":…,"seq":n,"serverseq":m,"position":"PT1.5S",
"parameters":{…}}; our replies carry our own `seq` (from 1) and `clientseq` (the last client seq).

Flow and events: `open` → `Reply(opened)` choosing PCMU 8 kHz, preferring the stereo
external+internal offer (→ legs `customer` (external) and `agent` (internal), de-interleaved in the
offered channel order), else a mono offer (one leg) → `CallStart(conversationId, …)`; the probe
(`conversationId`, or as the reference endpoints also check, `participant.id`, all zeros) is
answered the same way but starts no call. `ping` → `pong`. `paused` /
`resumed` → `Pause` / `Resume` (monitoring off pauses, the call goes on). `discarded` → `Gap` on
every leg. `update` → `updated` + `MetadataUpdate`. `error` from the client → counted `peer_error`.
`close` → `closed` + `CallEnd(reason)`. Sequence, id or size violations → `Reply(disconnect
{reason:"error"})` and a fatal Problem (the server closes after sending the reply).
Auth: the upgrade's RFC 9421 signature (`audiohook_signature.verify_audiohook_upgrade`); pass the
`Audiohook-Organization-Id` header here to require the `open` to match it.
"""

from __future__ import annotations

import json
import re
from typing import Any

from daemon.ingest.forks.common import Bad, ForkParserBase, deinterleave_u8, flatten_metadata
from daemon.ingest.forks.events import (
    CLOSE_NORMAL,
    CLOSE_POLICY_VIOLATION,
    Audio,
    CallEnd,
    CallStart,
    ForkEvent,
    Gap,
    LegSpec,
    MetadataUpdate,
    Pause,
    Problem,
    Reply,
    Resume,
)
from daemon.model import AudioFormat, Codec

INGEST = "audiohook"
PROBE_CONVERSATION_ID = "00000000-0000-0000-0000-000000000000"
MAX_TEXT_CHARS = 65535
CHANNEL_LEGS = {"external": "customer", "internal": "agent"}
PCMU = AudioFormat(Codec.PCMU, 8000)
_DURATION = re.compile(r"^PT(?:(\d+)H)?(?:(\d+)M)?(?:(\d+(?:\.\d+)?)S)?$")


def parse_duration(value: object) -> float | None:
    """ISO-8601 'PT1.5S' / 'PT2M3S' → seconds; None when malformed."""
    if not isinstance(value, str) or value == "PT":
        return None
    m = _DURATION.match(value)
    if m is None:
        return None
    hours, minutes, seconds = m.groups()
    return int(hours or 0) * 3600 + int(minutes or 0) * 60 + float(seconds or 0)


def choose_media(offers: object) -> dict[str, Any] | None:
    """The offer we take: PCMU 8 kHz with both channels first, else a PCMU mono one."""
    if not isinstance(offers, list):
        return None
    fits = [o for o in offers if isinstance(o, dict) and o.get("type") == "audio" and o.get("format") == "PCMU"
            and o.get("rate") == 8000 and _channels_ok(o.get("channels"))]
    fits.sort(key=lambda o: -len(o["channels"]))
    return fits[0] if fits else None


class AudioHookServerParser(ForkParserBase):
    def __init__(self, *, session_id: str | None = None, organization_id: str | None = None,
                 max_binary_bytes: int = 65536, max_problems_before_start: int = 16) -> None:
        super().__init__(max_text_chars=MAX_TEXT_CHARS, max_binary_bytes=max_binary_bytes,
                         max_problems_before_start=max_problems_before_start)
        self.session_id = session_id
        self.organization_id = organization_id
        self.seq = 0  # our last sent seq
        self.clientseq = 0  # the client's last seq
        self.opened = False
        self.probe = False
        self.paused = False
        self.channels: tuple[str, ...] = ()

    # public ------------------------------------------------------------------------------------
    def receive_text(self, text: str) -> list[ForkEvent]:
        if self.done:
            return []
        if len(text) > MAX_TEXT_CHARS:
            return self._client_error("oversize", f"text message of {len(text)} chars > 64 KiB")
        try:
            msg = json.loads(text)
        except (ValueError, RecursionError):
            return self._client_error("invalid_json", "text message is not valid JSON")
        if not isinstance(msg, dict) or msg.get("version") != "2" or not isinstance(msg.get("type"), str) \
                or not isinstance(msg.get("id"), str) or not _is_seq(msg.get("seq")) \
                or not _is_seq(msg.get("serverseq", 0)) or not isinstance(msg.get("parameters", {}), dict):
            return self._client_error("bad_message", "not a well-formed AudioHook v2 client message")
        if msg["seq"] != self.clientseq + 1:
            return self._client_error("bad_seq", f"seq {msg['seq']} after {self.clientseq}")
        self.clientseq = msg["seq"]
        if msg.get("serverseq", 0) > self.seq:
            return self._client_error("bad_serverseq", f"serverseq {msg.get('serverseq')} > {self.seq}")
        if self.session_id is None:
            self.session_id = msg["id"]
        elif msg["id"] != self.session_id:
            return self._client_error("wrong_session_id", "message id is not the session id")
        kind: str = msg["type"]
        params: dict[str, Any] = msg.get("parameters", {})
        try:
            return self._dispatch(kind, params)
        except Bad as bad:
            return self._client_error(bad.reason, bad.detail)

    def receive_binary(self, data: bytes) -> list[ForkEvent]:
        if self.done:
            return []
        too_big = self._oversize_binary(data)
        if too_big is not None:
            return too_big
        if not self.opened:
            return self._problem("audio_before_open", f"{len(data)} bytes")
        if self.call is None:  # the probe: nothing to analyse
            return []
        if not data:
            return self._problem("empty_payload", "")
        if len(self.channels) == 1:
            return [Audio(CHANNEL_LEGS[self.channels[0]], data, PCMU)]
        if len(data) % 2:
            return self._problem("misaligned_frame", f"{len(data)} bytes of 2-channel PCMU")
        first, second = deinterleave_u8(data)
        return [Audio(CHANNEL_LEGS[self.channels[0]], first, PCMU), Audio(CHANNEL_LEGS[self.channels[1]], second, PCMU)]

    def disconnect(self, reason: str, info: str = "") -> Reply:
        """A server-initiated `disconnect` (reason completed|unauthorized|error) to send."""
        params: dict[str, Any] = {"reason": reason}
        if info:
            params["info"] = info
        return self._reply("disconnect", params)

    # messages ----------------------------------------------------------------------------------
    def _dispatch(self, kind: str, params: dict[str, Any]) -> list[ForkEvent]:
        if kind == "open":
            return self._open(params)
        if not self.opened and kind not in ("close", "error", "ping"):
            raise Bad("before_open", kind)
        if kind == "ping":
            return [self._reply("pong", {})]
        if kind == "paused":
            self.paused = True
            return [Pause("client paused")] if self.call is not None else []
        if kind == "resumed":
            self.paused = False
            return [Resume()] if self.call is not None else []
        if kind == "discarded":
            seconds = parse_duration(params.get("discarded"))
            if seconds is None:
                raise Bad("bad_field", "discarded.discarded")
            if self.call is None:
                return []
            return [Gap(leg.name, seconds) for leg in self.call.legs]
        if kind == "update":
            meta = flatten_metadata(params)
            return [self._reply("updated", {}), *([MetadataUpdate(meta)] if self.call is not None else [])]
        if kind == "error":
            return self._problem("peer_error", f"{params.get('code')} {str(params.get('message'))[:100]}")
        if kind == "close":
            reason = params.get("reason")
            closed = self._reply("closed", {})
            self.ended = True
            if self.call is None:
                return [closed]
            return [closed, CallEnd(reason if isinstance(reason, str) else "close")]
        return self._problem("unknown_type", kind[:40])

    def _open(self, params: dict[str, Any]) -> list[ForkEvent]:
        if self.opened:
            raise Bad("duplicate_open", "")
        conversation_id = params.get("conversationId")
        org_id = params.get("organizationId")
        if not isinstance(conversation_id, str) or not conversation_id or not isinstance(org_id, str):
            raise Bad("bad_open", "open needs organizationId and conversationId")
        if self.organization_id is not None and org_id != self.organization_id:
            reply = self.disconnect("unauthorized", "organizationId does not match the upgrade header")
            return [reply, *self._fatal("organization_mismatch", org_id[:40], CLOSE_POLICY_VIOLATION)]
        media = choose_media(params.get("media"))
        if media is None:
            raise Bad("unsupported_media_format", f"no PCMU 8 kHz offer in {str(params.get('media'))[:100]}")
        self.opened = True
        self.channels = tuple(media["channels"])
        opened = self._reply("opened", {"startPaused": False, "media": [media]})
        participant = params.get("participant")
        participant_id = participant.get("id") if isinstance(participant, dict) else None
        # the reference endpoints treat a null conversation *or* participant id as the probe
        if PROBE_CONVERSATION_ID in (conversation_id, participant_id):
            self.probe = True
            return [opened]
        meta: dict[str, str] = {"organization_id": org_id, "session_id": self.session_id or ""}
        if isinstance(participant, dict):
            meta.update(flatten_metadata(participant, "participant."))
        for key in ("language",):
            if isinstance(params.get(key), str):
                meta[key] = params[key]
        custom = params.get("customConfig")
        if isinstance(custom, dict):
            meta.update(flatten_metadata(custom, "custom."))
        legs = tuple(LegSpec(CHANNEL_LEGS[c], PCMU) for c in self.channels)
        self.call = CallStart(conversation_id, meta, legs)
        return [opened, self.call]

    # replies and errors ------------------------------------------------------------------------
    def _reply(self, kind: str, params: dict[str, Any]) -> Reply:
        self.seq += 1
        msg = {"version": "2", "type": kind, "seq": self.seq, "clientseq": self.clientseq,
               "id": self.session_id or PROBE_CONVERSATION_ID, "parameters": params}
        return Reply(json.dumps(msg, separators=(",", ":")))

    def _client_error(self, reason: str, info: str) -> list[ForkEvent]:
        """What the reference server does on a client protocol error: disconnect with reason error."""
        reply = self.disconnect("error", f"Client Error: {info}"[:200])
        self.drops.add(reason)
        self.failed = True
        return [reply, Problem(reason, True, info[:200], CLOSE_NORMAL)]


def _channels_ok(channels: object) -> bool:
    return (isinstance(channels, list) and 0 < len(channels) <= 2 and all(isinstance(c, str) for c in channels)
            and set(channels) <= set(CHANNEL_LEGS) and len(set(channels)) == len(channels))


def _is_seq(value: object) -> bool:
    return isinstance(value, int) and not isinstance(value, bool) and value >= 0
