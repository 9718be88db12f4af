"""spoofwatch: real-time deepfake voice alarms for live phone calls."""

__version__ = "0.1.0"
