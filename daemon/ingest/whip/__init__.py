"""WebRTC ingest over WHIP (RFC 9725): `protocol` (sans-I/O checks, leg names, metadata), `media`
(frames → one channel, batched), `session` (one peer connection and its tracks), `server` (aiohttp)."""
