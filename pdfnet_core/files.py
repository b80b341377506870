"""Writing files so that no reader ever sees half of one.

Every writer gets its own hidden temporary file (unique, short name) in the target's folder; it is
fsynced and renamed over the target, then the folder is fsynced.  A killed writer leaves at most a
hidden ``.pdfnet-*.partial`` file; of two concurrent writers of one name the last rename wins with
a complete file.  Used by the CLI's outputs and by checkpoint conversion.

Logs (the batch manifest) grow by ``append_line``: one ``write`` of a whole line on a file opened
with O_APPEND, then fsync, so concurrent writers (shards of a job array) never interleave a line
and a killed writer leaves whole lines (at most the last one missing).
"""
from __future__ import annotations

import contextlib
import functools
import os
import tempfile
from pathlib import Path
from typing import BinaryIO, Callable

TEMP_PREFIX = ".pdfnet-"
TEMP_SUFFIX = ".partial"


@functools.cache
def _file_mode() -> int:
    # mkstemp creates 0600; a finished file gets the mode a plain open() would have given it.
    # The umask can only be read by setting it, so it is read once per process.
    umask = os.umask(0o022)
    os.umask(umask)
    return 0o666 & ~umask


def atomic_write(path: Path, write: Callable[[BinaryIO], None]) -> Path:
    """Call ``write(file)`` on a temporary file next to ``path`` and rename it to ``path`` when complete."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=TEMP_PREFIX, suffix=TEMP_SUFFIX)
    try:
        with os.fdopen(fd, "wb") as fh:
            write(fh)
            fh.flush()
            os.fsync(fh.fileno())
        os.chmod(tmp, _file_mode())
        os.replace(tmp, path)
    except BaseException:
        with contextlib.suppress(OSError):
            os.unlink(tmp)
        raise
    fsync_dir(path.parent)
    return path


def fsync_dir(folder: Path) -> None:
    """Make a rename durable (POSIX); a no-op where folders cannot be opened (Windows)."""
    try:
        fd = os.open(folder, os.O_RDONLY)
    except OSError:
        return
    try:
        os.fsync(fd)
    except OSError:
        pass
    finally:
        os.close(fd)


def append_line(path: Path, line: str) -> None:
    """Append ``line`` (a newline is added) to ``path`` in one write, durably."""
    data = (line.rstrip("\n") + "\n").encode()
    fd = os.open(path, os.O_WRONLY | os.O_APPEND | os.O_CREAT, _file_mode())
    try:
        written = os.write(fd, data)
        if written != len(data):  # a full disk; never leave half a line to be joined by the next
            raise OSError(f"{path}: short write ({written} of {len(data)} bytes)")
        os.fsync(fd)
    finally:
        os.close(fd)
