"""FLIP hub service (flip-api)."""

__version__ = "0.1.0"
