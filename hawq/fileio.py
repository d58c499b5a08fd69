"""Atomic file writes and CSV text: every file the project writes goes through :func:`atomic_write`,
so a crash or a bad input mid-write leaves the previous file intact, never a truncated one."""
from __future__ import annotations

import csv
import io
import os
import tempfile
from collections.abc import Callable, Sequence


__all__ = ["atomic_write", "write_text_atomic", "rows_csv"]

def _umask() -> int:
    mask = os.umask(0)
    os.umask(mask)
    return mask


def atomic_write(path: str | os.PathLike, write: Callable[[str], None], suffix: str = "") -> None:
    """Call ``write(tmp_path)`` on a temp file beside ``path`` (same directory, same ``suffix``),
    then rename it over ``path``; on any failure the temp file is removed and ``path`` untouched.
    The directory is created if needed; the file gets normal permissions (mkstemp makes it 0600)."""
    path = os.fspath(path)
    directory = os.path.dirname(os.path.abspath(path))
    os.makedirs(directory, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=".tmp-", suffix=suffix, dir=directory)
    os.close(fd)
    try:
        write(tmp)
        os.chmod(tmp, 0o666 & ~_umask())
        os.replace(tmp, path)
    except BaseException:
        if os.path.exists(tmp):
            os.unlink(tmp)
        raise


def write_text_atomic(path: str | os.PathLike, text: str) -> None:
    """Write ``text`` (UTF-8, newlines as given) to ``path`` atomically."""
    def write(tmp: str) -> None:
        with open(tmp, "w", encoding="utf-8", newline="") as f:
            f.write(text)
    atomic_write(path, write)


def rows_csv(rows: Sequence[dict[str, object]], fields: Sequence[str]) -> str:
    """CSV text of ``rows`` with header ``fields``; floats as ``repr`` (round-trips exactly)."""
    out = io.StringIO()
    writer = csv.DictWriter(out, fieldnames=list(fields), lineterminator="\n")
    writer.writeheader()
    writer.writerows(rows)
    return out.getvalue()
