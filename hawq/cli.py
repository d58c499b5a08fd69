"""Shared CLI plumbing: one-line errors instead of tracebacks."""
from __future__ import annotations

import functools
import sys

from hawq.errors import HawqError


def one_line_errors(main):
    """Run ``main``; a HawqError (or a bad/unreadable path) prints ``error: ...`` on one line, exit 2."""
    @functools.wraps(main)
    def wrapper(*args, **kwargs):
        try:
            return main(*args, **kwargs)
        except HawqError as e:
            print(f"error: {e}", file=sys.stderr)
            sys.exit(2)
        except (FileNotFoundError, IsADirectoryError, PermissionError, NotADirectoryError) as e:
            print(f"error: {e.strerror or e}: {e.filename}", file=sys.stderr)
            sys.exit(2)
        except KeyboardInterrupt:
            print("error: interrupted", file=sys.stderr)
            sys.exit(130)
    return wrapper
