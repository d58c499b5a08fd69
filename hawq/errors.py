"""User-facing errors.

:class:`HawqError` carries a message meant for the person running a command: CLIs catch it
and print ``error: <message>`` as one line (exit code 2) instead of a traceback.
"""
from __future__ import annotations


__all__ = ["HawqError"]

class HawqError(Exception):
    """A user-facing error (bad arch, bad bit_config, bad file); the message is one line."""
