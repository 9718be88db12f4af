"""Sans-I/O protocol cores for the media forks contact centers already run (issue 14).

One module per dialect, each with a parser for one connection that turns wire bytes into the events
of `daemon.ingest.forks.events`: telnyx, plivo, exotel, vonage, freeswitch (mod_audio_fork /
mod_audio_stream), jambonz, asterisk_ws (chan_websocket), audiohook (Genesys, plus
audiohook_signature for its RFC 9421 upgrade signature), audiosocket (Asterisk, TCP).
"""
