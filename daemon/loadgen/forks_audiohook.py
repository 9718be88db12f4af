"""Genesys AudioHook v2 client side, sans-I/O: the RFC 9421 signed upgrade and one session's messages.

The upgrade carries `Audiohook-Organization-Id`, `Audiohook-Session-Id`, `Audiohook-Correlation-Id`,
`X-API-KEY` and an RFC 9421 HTTP message signature (label `sig1`, `alg="hmac-sha256"`, `keyid` = the
API key, a fresh `nonce`, `created`, `expires` = created + 30) over `@request-target`, `@authority`
and those four headers, keyed with the base64-decoded client secret: what Genesys' reference client
(purecloudlabs/audiohook-reference-implementation, signature-builder.ts) sends.

The session (`AudioHookClient`): `open` offering PCMU 8 kHz stereo (external = customer, internal =
agent) and both mono variants; audio only once `opened` chose an offer (in the chosen channel
layout); a `ping` every `ping_s` whose `pong` must come before the next ping; optionally `paused` /
`resumed` around a stretch of silence on the wire (the clip holds its place); `close` at the end,
answered by `closed`. Every message carries `seq` (previous + 1), `serverseq` (the last server seq
seen) and `position` (audio sent so far). The connection probe (`probe=True`) is the same with the
all-zeros conversation id and no audio.
"""

from __future__ import annotations

import base64
import hashlib
import hmac
import json
import secrets
import uuid
from dataclasses import dataclass, field
from typing import Any

PROBE_ID = "00000000-0000-0000-0000-000000000000"
COMPONENTS = ("@request-target", "@authority", "audiohook-organization-id", "audiohook-session-id",
              "audiohook-correlation-id", "x-api-key")
STEREO = {"type": "audio", "format": "PCMU", "channels": ["external", "internal"], "rate": 8000}
OFFERS = [STEREO, {**STEREO, "channels": ["external"]}, {**STEREO, "channels": ["internal"]}]
FRAME_S = 0.02


def _quote(value: str) -> str:
    return '"' + value.replace("\\", "\\\\").replace('"', '\\"') + '"'


def signed_upgrade_headers(*, authority: str, target: str, organization_id: str, session_id: str,
                           correlation_id: str, api_key: str, client_secret_b64: str, now: float,
                           nonce: str | None = None) -> dict[str, str]:
    """The AudioHook upgrade headers, signed (RFC 9421 §2.5 signature base, hmac-sha256 §3.3.3).
    `authority` is what the Host header says (host[:port], lower-case), `target` the path and query.
    An empty client secret gives an unsigned upgrade (Genesys does that too)."""
    headers = {"audiohook-organization-id": organization_id, "audiohook-session-id": session_id,
               "audiohook-correlation-id": correlation_id, "x-api-key": api_key}
    plain = {"Audiohook-Organization-Id": organization_id, "Audiohook-Session-Id": session_id,
             "Audiohook-Correlation-Id": correlation_id, "X-API-KEY": api_key}
    secret = base64.b64decode(client_secret_b64, validate=True)
    if not secret:
        return plain
    created = int(now)
    params = (f";keyid={_quote(api_key)};nonce={_quote(nonce or secrets.token_urlsafe(24))}"
              f';alg="hmac-sha256";created={created};expires={created + 30}')
    covered = "(" + " ".join(_quote(c) for c in COMPONENTS) + ")" + params
    values = {"@request-target": target, "@authority": authority.lower(), **headers}
    base = "\n".join([*(f'"{c}": {values[c]}' for c in COMPONENTS), f'"@signature-params": {covered}'])
    sig = base64.b64encode(hmac.new(secret, base.encode(), hashlib.sha256).digest()).decode()
    return plain | {"Signature-Input": f"sig1={covered}", "Signature": f"sig1=:{sig}:"}


def duration(seconds: float) -> str:
    return f"PT{seconds:.2f}".rstrip("0").rstrip(".") + "S"


@dataclass
class Tick:
    """What to send in one 20 ms slot: control texts first, then audio frame `audio` (None: none)."""

    texts: list[str] = field(default_factory=list)
    audio: int | None = None


class AudioHookClient:
    """One AudioHook session seen from Genesys' side. Feed every server text to `receive_text`; the
    driver sends `open()`, waits for `opened`, sends `tick(i)` for i < n_ticks, then `close()` and
    waits for `closed`. Protocol deviations of the server are collected in `problems`."""

    def __init__(self, *, n_frames: int, session_id: str, organization_id: str, conversation_id: str | None = None,
                 ping_s: float = 5.0, pause_at_s: float | None = None, pause_s: float = 0.0,
                 params: dict[str, str] | None = None, probe: bool = False, check_pongs: bool = True) -> None:
        self.session_id, self.organization_id = session_id, organization_id
        self.check_pongs = check_pongs  # off when sending faster than real time: pings then come too fast
        self.probe = probe
        self.conversation_id = PROBE_ID if probe else (conversation_id or str(uuid.uuid4()))
        self.params = dict(params or {})
        self.n_frames = 0 if probe else n_frames
        self.ping_ticks = max(1, round(ping_s / FRAME_S))
        self.pause_at = round(pause_at_s / FRAME_S) if pause_at_s is not None and not probe else None
        self.pause_ticks = round(pause_s / FRAME_S) if self.pause_at is not None else 0
        if self.pause_at is not None:
            self.pause_at = min(self.pause_at, self.n_frames)
        self.n_ticks = self.n_frames + self.pause_ticks
        self.seq = 0
        self.serverseq = 0
        self.frames_sent = 0
        self.channels: tuple[str, ...] = ()
        self.opened = False
        self.closed = False
        self.disconnect_reason: str | None = None
        self.pings = 0
        self.pongs = 0
        self.problems: list[str] = []

    # client → server -------------------------------------------------------------------------
    def _msg(self, kind: str, parameters: dict[str, Any]) -> str:
        self.seq += 1
        return json.dumps({"version": "2", "id": self.session_id, "type": kind, "seq": self.seq,
                           "serverseq": self.serverseq, "position": duration(self.frames_sent * FRAME_S),
                           "parameters": parameters}, separators=(",", ":"))

    def open(self) -> str:
        participant_id = PROBE_ID if self.probe else str(uuid.uuid5(uuid.NAMESPACE_URL, self.conversation_id))
        params: dict[str, Any] = {
            "organizationId": self.organization_id, "conversationId": self.conversation_id,
            "participant": {"id": participant_id, "ani": "+13175550100", "aniName": "Loadgen Caller",
                            "dnis": "+13175550199"},
            "media": OFFERS, "language": "en-US"}
        if self.params:
            params["customConfig"] = self.params
        return self._msg("open", params)

    def tick(self, i: int) -> Tick:
        """Slot i (0 ≤ i < n_ticks): pings every ping_s, the pause stretch, else the next audio frame."""
        out = Tick()
        if i and i % self.ping_ticks == 0:
            if self.check_pongs and self.pings > self.pongs:
                self.problems.append(f"no pong to ping {self.pings} within {self.ping_ticks * FRAME_S:.0f} s")
            self.pings += 1
            out.texts.append(self._msg("ping", {}))
        pa = self.pause_at
        if pa is not None and pa <= i < pa + self.pause_ticks:
            if i == pa:
                out.texts.append(self._msg("paused", {}))
            return out
        if pa is not None and self.pause_ticks and i == pa + self.pause_ticks:
            out.texts.append(self._msg("resumed", {"start": duration(self.frames_sent * FRAME_S),
                                                    "discarded": "PT0S"}))
        if self.opened and self.frames_sent < self.n_frames:
            out.audio = self.frames_sent
            self.frames_sent += 1
        return out

    def close(self, reason: str = "end") -> str:
        return self._msg("close", {"reason": reason})

    # server → client -------------------------------------------------------------------------
    def receive_text(self, text: str) -> str:
        """Handle one server message; returns its type ("" when malformed)."""
        try:
            msg = json.loads(text)
        except ValueError:
            self.problems.append("server sent invalid JSON")
            return ""
        if not isinstance(msg, dict) or msg.get("version") != "2" or not isinstance(msg.get("type"), str):
            self.problems.append(f"malformed server message {text[:80]!r}")
            return ""
        kind: str = msg["type"]
        seq, clientseq = msg.get("seq"), msg.get("clientseq")
        if not isinstance(seq, int) or seq != self.serverseq + 1:
            self.problems.append(f"server seq {seq!r} after {self.serverseq}")
        if not isinstance(clientseq, int) or clientseq > self.seq:
            self.problems.append(f"server clientseq {clientseq!r} beyond our seq {self.seq}")
        if msg.get("id") != self.session_id:
            self.problems.append(f"server message id {msg.get('id')!r} is not the session id")
        if isinstance(seq, int):
            self.serverseq = seq
        raw_params = msg.get("parameters")
        params: dict[str, Any] = raw_params if isinstance(raw_params, dict) else {}
        if kind == "opened":
            media = params.get("media")
            chosen = media[0] if isinstance(media, list) and media and isinstance(media[0], dict) else None
            channels = chosen.get("channels") if chosen else None
            if chosen is None or chosen.get("format") != "PCMU" or not isinstance(channels, list) \
                    or not channels or not set(channels) <= {"external", "internal"}:
                self.problems.append(f"opened chose no offered medium: {str(media)[:100]}")
            else:
                self.channels = tuple(channels)
            self.opened = True
        elif kind == "pong":
            self.pongs += 1
        elif kind == "closed":
            self.closed = True
        elif kind == "disconnect":
            self.disconnect_reason = str(params.get("reason", ""))
        return kind


class AudioHookPlan:
    """One run's AudioHook calls: the clips as PCMU 20 ms frames (customer = external, agent =
    internal) in each channel layout a server may choose, and the session options."""

    def __init__(self, customer: bytes, agent: bytes, *, api_key: str, client_secret_b64: str,
                 organization_id: str = "", ping_s: float = 5.0, pause_at_s: float | None = None,
                 pause_s: float = 0.0, params: dict[str, str] | None = None, probe: bool = False) -> None:
        n = max(len(customer), len(agent))
        n = -(-n // 160) * 160
        customer, agent = customer.ljust(n, b"\xff"), agent.ljust(n, b"\xff")  # μ-law silence
        stereo = bytearray(2 * n)
        stereo[0::2], stereo[1::2] = customer, agent
        self.layouts: dict[tuple[str, ...], list[bytes]] = {
            ("external", "internal"): [bytes(stereo[i : i + 320]) for i in range(0, 2 * n, 320)],
            ("external",): [customer[i : i + 160] for i in range(0, n, 160)],
            ("internal",): [agent[i : i + 160] for i in range(0, n, 160)]}
        inverse = bytearray(2 * n)
        inverse[0::2], inverse[1::2] = agent, customer
        self.layouts[("internal", "external")] = [bytes(inverse[i : i + 320]) for i in range(0, 2 * n, 320)]
        self.n_frames = n // 160
        try:
            base64.b64decode(client_secret_b64, validate=True)
        except ValueError:  # binascii.Error
            raise ValueError("the client secret is not base64 (Genesys shows it base64-encoded)") from None
        self.api_key, self.client_secret_b64 = api_key, client_secret_b64
        self.organization_id = organization_id or str(uuid.uuid4())
        self.ping_s, self.pause_at_s, self.pause_s = ping_s, pause_at_s, pause_s
        self.params, self.probe = dict(params or {}), probe

    def client(self, session_id: str, *, realtime: bool = True) -> AudioHookClient:
        return AudioHookClient(n_frames=self.n_frames, session_id=session_id, organization_id=self.organization_id,
                               ping_s=self.ping_s, pause_at_s=self.pause_at_s, pause_s=self.pause_s,
                               params=self.params, probe=self.probe, check_pongs=realtime)

    def headers(self, session_id: str, *, authority: str, target: str, now: float) -> dict[str, str]:
        return signed_upgrade_headers(authority=authority, target=target, organization_id=self.organization_id,
                                      session_id=session_id, correlation_id=str(uuid.uuid4()),
                                      api_key=self.api_key, client_secret_b64=self.client_secret_b64, now=now)
