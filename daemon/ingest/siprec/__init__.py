"""SIPREC recording server (RFC 7866): SIP UAS over UDP/TCP, media through the RTP ingest."""
