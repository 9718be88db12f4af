"""Time formatting shared by every layer (webhook bodies, the outbox, its CLI): no layer imports
another one for a date helper."""

from __future__ import annotations

from datetime import UTC, datetime


def iso(ts: float) -> str:
    """Unix seconds → ISO-8601 UTC with milliseconds and a `Z` (2026-11-23T10:00:00.000Z)."""
    return datetime.fromtimestamp(ts, UTC).isoformat(timespec="milliseconds").replace("+00:00", "Z")
