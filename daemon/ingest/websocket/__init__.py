"""The shared websocket listener (every websocket dialect, by path) and the generic fork driver."""
