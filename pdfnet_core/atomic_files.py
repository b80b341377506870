"""Writing files so that no reader ever sees half of one.

Every writer gets its own hidden temporary file (unique, short name) in the target's folder; it is
fsynced and renamed over the target, then the folder is fsynced.  A killed writer leaves at most a
hidden ``.pdfnet-<host>-<pid>-<random>.partial`` file; of two concurrent writers of one name the
last rename wins with a complete file.  Used by the CLI's outputs, checkpoint conversion and training.

``remove_stale_temporaries`` removes what killed writers left: the name tells which host and
process wrote a temporary file, so a later run on the same host removes those of processes that
are gone; any file older than a day (a writer on another host, whose processes cannot be asked, or
an older name without a pid) is removed by its age alone.  A live writer's file is never removed.

Logs (the batch manifest) grow by ``append_line``: one ``write`` of a whole line on a file opened
with O_APPEND, then fsync, so concurrent writers (shards of a job array) never interleave a line
and a killed writer leaves whole lines (at most the last one missing).
"""
from __future__ import annotations

import contextlib
import functools
import hashlib
import logging
import os
import re
import socket
import stat
import tempfile
import time
from pathlib import Path
from typing import BinaryIO, Callable

log = logging.getLogger(__name__)

# Every temporary file of ours is named TEMP_PREFIX + "<host>-<pid>-<random>" + TEMP_SUFFIX; files
# named TEMP_PREFIX + "<random>" + TEMP_SUFFIX (before the writer's identity was added) are ours too.
TEMP_PREFIX = ".pdfnet-"
TEMP_SUFFIX = ".partial"
STALE_AGE = 24 * 3600       # seconds: a temporary file not written to for this long is abandoned

_HOST_CHARS = re.compile(r"[^A-Za-z0-9_.-]+")  # pid and random part have no "-": split at the last two
_HOST_MAX = 32
_CAN_ASK = os.name != "nt"   # whether os.kill(pid, 0) only asks: on Windows it ends the process


@functools.cache
def _host() -> str:
    """This machine's name as it goes into a file name: short, [A-Za-z0-9_.-] only, never empty.

    A long name is cut and a hash of the whole name added, so that hosts which differ only past the
    cut still differ (a file of a host taken for this one could be removed while it is written)."""
    try:
        name = socket.gethostname()
    except OSError:
        name = ""
    token = _HOST_CHARS.sub("_", name).strip("_.-") or "host"
    if token != name or len(token) > _HOST_MAX:   # changed or cut: keep two names apart that would clash
        digest = hashlib.sha1(name.encode("utf-8", "surrogateescape")).hexdigest()[:6]
        token = f"{token[:_HOST_MAX - 7]}_{digest}"
    return token


def _temp_prefix() -> str:
    # the pid is read at every call: a forked child writes under its own
    return f"{TEMP_PREFIX}{_host()}-{os.getpid()}-"


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
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=_temp_prefix(), suffix=TEMP_SUFFIX)
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


# --------------------------------------------------------------------------------------------
# what killed writers left


def _writer(name: str) -> tuple[str, int] | None:
    """(host, pid) of the writer of one of our temporary files, None when the name has none."""
    parts = name[len(TEMP_PREFIX):-len(TEMP_SUFFIX)].rsplit("-", 2)
    if len(parts) != 3 or not parts[0] or not parts[1].isdigit() or not parts[1].isascii():
        return None
    return parts[0], int(parts[1])


def process_alive(pid: int) -> bool | None:
    """Whether process ``pid`` of this host runs; None when that cannot be told."""
    if not _CAN_ASK or pid <= 0:      # pid 0 and -1 would signal groups
        return None
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:           # another user's process
        return True
    except (OSError, OverflowError, ValueError):
        return None
    return True


def _is_ours(name: str) -> bool:
    return (name.startswith(TEMP_PREFIX) and name.endswith(TEMP_SUFFIX)
            and len(name) > len(TEMP_PREFIX) + len(TEMP_SUFFIX))


def _stale(entry: os.DirEntry, max_age: float, now: float) -> bool:
    st = entry.stat(follow_symlinks=False)
    if not stat.S_ISREG(st.st_mode):
        return False
    if now - st.st_mtime > max_age:
        return True
    writer = _writer(entry.name)
    if writer is None or writer[0] != _host():    # another host's processes cannot be asked
        return False
    return process_alive(writer[1]) is False


def remove_stale_temporaries(folder: Path, *, max_age: float = STALE_AGE, recursive: bool = True) -> list[Path]:
    """Remove the temporary files that writers which are gone left in ``folder``; returns them.

    Removed: our temporary files (``TEMP_PREFIX...TEMP_SUFFIX``, regular files) whose writer ran on
    this host and is no longer alive, and any of them not modified for ``max_age`` seconds, whoever
    wrote it.  Kept: everything else, above all the file of a live process younger than
    ``max_age`` (a writer on another host is judged by age alone).  With ``recursive`` the
    sub-folders are cleaned too; symbolic links are never followed.  A file or folder that vanishes
    or cannot be read or removed meanwhile (another run cleaning, a writer finishing) is skipped.
    """
    removed: list[Path] = []
    now = time.time()
    pending = [Path(folder)]
    while pending:
        current = pending.pop()
        try:
            with os.scandir(current) as entries:
                entries = list(entries)
        except OSError:
            continue
        for entry in entries:
            try:
                if entry.is_dir(follow_symlinks=False):
                    if recursive:
                        pending.append(current / entry.name)
                    continue
                if not _is_ours(entry.name) or not _stale(entry, max_age, now):
                    continue
                os.unlink(entry.path)
            except FileNotFoundError:
                continue
            except OSError as exc:
                log.debug("cannot remove %s: %s", entry.path, exc)
                continue
            removed.append(current / entry.name)
    return sorted(removed)
