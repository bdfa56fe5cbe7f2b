"""resilience: keep a web platform recoverable, and prove it."""

__version__ = "0.1.0"
