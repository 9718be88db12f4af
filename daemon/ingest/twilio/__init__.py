"""Twilio Media Streams ingest (also SignalWire's compatible `<Stream>`): `protocol` is the sans-I/O
parser, `signature` the X-Twilio-Signature check, `server` the websocket server (`TwilioIngest`)."""
