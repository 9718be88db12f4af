"""Asterisk AudioSocket (TCP) ingest."""
