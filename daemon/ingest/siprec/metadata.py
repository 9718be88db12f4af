"""SIPREC bodies: the multipart/mixed split (standard library `email`) and the recording metadata
(RFC 7865, `application/rs-metadata+xml`, legacy `application/rs-metadata`) mapped onto the offer's
m-lines: which participant sends on which stream, hence what each analysed leg is called.

Published variants handled (tests/fixtures/siprec/): labels from 0 or from 1 (matched as strings, never
by arithmetic); metadata without `<stream>` or without `send` (OpenSIPS): participants are given to the
audio m-lines in order; pre-RFC `<participant><send>` (no participantstreamassoc); the legacy content
type. Metadata that names a label the SDP does not have is refused (`MetadataError`).
"""

from __future__ import annotations

import re
import xml.etree.ElementTree as ET
from dataclasses import dataclass, field
from email.message import Message
from email.parser import BytesParser

from daemon.ingest.siprec.sdp import MediaLine

MAX_METADATA_BYTES = 65536
METADATA_TYPES = ("application/rs-metadata+xml", "application/rs-metadata")
ROLES = ("caller", "agent")
_UNSAFE = re.compile(r"[^A-Za-z0-9_.-]+")


class BodyError(ValueError):
    pass


class MetadataError(ValueError):
    pass


@dataclass
class Bodies:
    sdp: str = ""
    metadata: bytes = b""


def split_body(content_type: str, body: bytes) -> Bodies:
    """SDP and metadata parts of an INVITE/UPDATE body. Raises BodyError when it does not parse."""
    ctype = content_type.split(";")[0].strip().lower()
    if ctype == "application/sdp":
        return Bodies(sdp=body.decode("utf-8", "replace"))
    if ctype in METADATA_TYPES:
        return Bodies(metadata=body)
    if ctype != "multipart/mixed":
        raise BodyError(f"unsupported body type {ctype or '(none)'}")
    try:
        msg = BytesParser().parsebytes(b"Content-Type: " + content_type.encode() + b"\r\n\r\n" + body)
    except Exception as exc:  # the email package raises several types on hostile input
        raise BodyError(f"multipart body does not parse: {exc}") from None
    if not msg.is_multipart() or msg.defects:
        raise BodyError("multipart body does not parse (missing or wrong boundary)")
    out = Bodies()
    parts = msg.get_payload()
    assert isinstance(parts, list)
    for part in parts:
        if not isinstance(part, Message):
            continue
        payload = part.get_payload(decode=True)
        data = payload if isinstance(payload, bytes) else b""
        ptype = part.get_content_type().lower()
        if ptype == "application/sdp" and not out.sdp:
            out.sdp = data.decode("utf-8", "replace")
        elif ptype in METADATA_TYPES and not out.metadata:
            out.metadata = data
    return out


@dataclass
class Participant:
    pid: str
    aor: str = ""
    name: str = ""
    sends: list[str] = field(default_factory=list)  # stream ids


@dataclass
class Metadata:
    session_ids: list[str] = field(default_factory=list)  # sipSessionID of the recorded call
    group_id: str = ""
    participants: list[Participant] = field(default_factory=list)
    labels: dict[str, str] = field(default_factory=dict)  # stream_id → label


def _local(tag: str) -> str:
    return tag.rsplit("}", 1)[-1]


def parse_metadata(data: bytes) -> Metadata:
    """Raises MetadataError on XML that does not parse (DTDs refused: no entity expansion games)."""
    if len(data) > MAX_METADATA_BYTES:
        raise MetadataError("metadata too large")
    if b"<!DOCTYPE" in data or b"<!ENTITY" in data:
        raise MetadataError("metadata with a DTD is refused")
    try:
        root = ET.fromstring(data)
    except ET.ParseError as exc:
        raise MetadataError(f"metadata is not XML: {exc}") from None
    if _local(root.tag) != "recording":
        raise MetadataError("metadata root is not <recording>")
    md = Metadata()
    by_id: dict[str, Participant] = {}
    for el in root:
        kind = _local(el.tag)
        if kind == "group":
            md.group_id = el.get("group_id", "")
        elif kind == "session":
            md.session_ids += [(c.text or "").strip() for c in el if _local(c.tag) == "sipSessionID"]
            md.group_id = md.group_id or next(((c.text or "").strip() for c in el if _local(c.tag) == "group-ref"), "")
        elif kind == "participant":
            pid = el.get("participant_id") or el.get("id") or f"p{len(md.participants)}"
            p = by_id.setdefault(pid, Participant(pid))
            if p not in md.participants:
                md.participants.append(p)
            for c in el:
                if _local(c.tag) == "nameID":
                    p.aor = p.aor or c.get("aor", "")
                    p.name = p.name or next(((n.text or "").strip() for n in c if _local(n.tag) == "name"), "")
                elif _local(c.tag) == "send" and c.text:
                    p.sends.append(c.text.strip())  # pre-RFC drafts (Cisco, AudioCodes)
        elif kind == "stream":
            label = next(((c.text or "").strip() for c in el if _local(c.tag) == "label"), "")
            sid = el.get("stream_id") or el.get("id") or ""
            if sid and label:
                md.labels[sid] = label
        elif kind == "participantstreamassoc":
            pid = el.get("participant_id", "")
            p = by_id.setdefault(pid, Participant(pid))
            if p not in md.participants:
                md.participants.append(p)
            p.sends += [(c.text or "").strip() for c in el if _local(c.tag) == "send" and c.text]
    return md


@dataclass(frozen=True)
class LegPlan:
    index: int  # m-line
    name: str
    label: str
    aor: str = ""
    participant_id: str = ""


def _sanitise(text: str) -> str:
    return _UNSAFE.sub("_", text).strip("_")[:32]


def _leg_name(p: Participant | None, m: MediaLine) -> str:
    if p is not None:
        for candidate in (p.name, p.aor.split(":", 1)[-1].split("@")[0].split(";")[0]):
            if candidate.strip().lower() in ROLES:
                return candidate.strip().lower()
        user = _sanitise(p.aor.split(":", 1)[-1].split("@")[0].split(";")[0]) or _sanitise(p.name)
        if user:
            return user
    return f"stream{_sanitise(m.label)}" if m.label else f"stream{m.index + 1}"


def plan_legs(media: list[MediaLine], md: Metadata | None) -> list[LegPlan]:
    """One leg per audio m-line, named from the participant that sends on it. Raises MetadataError when
    the metadata names a label the SDP does not carry, or a send that names an undeclared stream."""
    audio = [m for m in media if m.media == "audio" and m.audio_types]
    by_label = {m.label: m for m in audio if m.label}
    all_labels = {m.label for m in media if m.label}  # incl. streams we decline (SRTP, video)
    owner: dict[int, Participant] = {}
    if md is not None:
        for sid, label in md.labels.items():
            if label not in all_labels:
                raise MetadataError(f"metadata stream {sid!r} has label {label!r}, which no m-line carries")
        for p in md.participants:
            for sid in p.sends:
                if sid not in md.labels:
                    if md.labels:
                        raise MetadataError(f"participant {p.pid!r} sends on undeclared stream {sid!r}")
                    continue
                if md.labels[sid] in by_label:
                    owner.setdefault(by_label[md.labels[sid]].index, p)
        # Fallback (OpenSIPS: no <stream> or no send): the unassigned participants, in document order,
        # go to the unassigned audio m-lines, in m-line order.
        spare = [p for p in md.participants if p not in owner.values()]
        for m in audio:
            if m.index not in owner and spare:
                owner[m.index] = spare.pop(0)
    plans: list[LegPlan] = []
    taken: set[str] = set()
    for m in audio:
        who = owner.get(m.index)
        name = base = _leg_name(who, m)
        n = 2
        while name in taken:
            name, n = f"{base}-{n}", n + 1
        taken.add(name)
        plans.append(LegPlan(m.index, name, m.label, who.aor if who else "", who.pid if who else ""))
    return plans


def webhook_metadata(md: Metadata | None, plans: list[LegPlan]) -> dict[str, str]:
    """What the calls' webhooks carry under `metadata` (bounded: ≤ 8 legs, values cut to 256 chars)."""
    out: dict[str, str] = {}
    if md is not None:
        if md.session_ids:
            out["sip_session_id"] = ",".join(md.session_ids)[:256]
        if md.group_id:
            out["group_id"] = md.group_id[:256]
    for plan in plans:
        if plan.aor:
            out[f"participant.{plan.name}"] = plan.aor[:256]
        if plan.label:
            out[f"label.{plan.name}"] = plan.label[:64]
    return out
