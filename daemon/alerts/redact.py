"""Webhook URLs often carry a token (`?token=…`, `https://user:pass@…`): wherever a URL is shown —
logs, /healthz, the outbox CLI, errors — it goes through `redact_url` first."""

from __future__ import annotations

from urllib.parse import urlsplit, urlunsplit

#: what replaces a query, a fragment or userinfo
HIDDEN = "…"


def redact_url(url: str) -> str:
    """Scheme, host, port and path; userinfo, query and fragment replaced by `…`
    (`https://u:p@hooks.example.com/a?token=x` → `https://…@hooks.example.com/a?…`).
    Never raises: a URL that does not parse is hidden whole."""
    try:
        parts = urlsplit(url)
        host = parts.hostname or ""
        port = parts.port
    except ValueError:
        return HIDDEN
    if ":" in host:
        host = f"[{host}]"
    netloc = host if port is None else f"{host}:{port}"
    if "@" in parts.netloc:
        netloc = f"{HIDDEN}@{netloc}"
    return urlunsplit((parts.scheme, netloc, parts.path, HIDDEN if parts.query else "",
                       HIDDEN if parts.fragment else ""))


def redact_text(text: str, url: str) -> str:
    """`text` (e.g. an HTTP client's error message) with every occurrence of `url` redacted."""
    return text.replace(url, redact_url(url)) if url else text
