"""``manifest.jsonl`` in --out: one JSON line per attempt at an input, the latest line winning.

A line says which source (path or URI, its bytes and mtime), which outputs (each with its bytes
and mtime, so an output changed or truncated since is seen), under which settings, how long it
took, and whether it was done or failed and why.  Lines are appended with ``files.append_line``
(one write, O_APPEND, fsync): a killed run loses at most the line of the input it was writing,
and that input is redone.  Shards of a job array may share one manifest.
"""
from __future__ import annotations

import json
import os
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path

from ..atomic_files import append_line
from .config import CutoutConfig
from .jobs import Job

MANIFEST_NAME = "manifest.jsonl"
DONE, FAILED = "done", "failed"


@dataclass(frozen=True)
class Output:
    path: str        # relative to --out, POSIX
    bytes: int
    mtime_ns: int


@dataclass(frozen=True)
class Record:
    source: str
    stem: str
    size: int | None
    mtime_ns: int | None
    status: str
    outputs: tuple[Output, ...] = ()
    seconds: float = 0.0
    error: str | None = None
    stages: dict[str, float] = field(default_factory=dict)
    settings: str = ""
    max_pixels: int = 0
    finished: float = 0.0     # Unix time

    def to_json(self) -> str:
        data = asdict(self)
        data["outputs"] = [asdict(o) for o in self.outputs]
        return json.dumps(data, ensure_ascii=False, separators=(",", ":"))

    @classmethod
    def from_json(cls, line: str) -> "Record":
        data = json.loads(line)
        data["outputs"] = tuple(Output(**o) for o in data.get("outputs", ()))
        known = cls.__dataclass_fields__
        return cls(**{k: v for k, v in data.items() if k in known})


def output_entries(paths: list[Path], out: Path) -> tuple[Output, ...]:
    """The manifest's view of written outputs (their size and mtime right after the rename)."""
    entries = []
    for path in paths:
        st = path.stat()
        entries.append(Output(path.relative_to(out).as_posix(), st.st_size, st.st_mtime_ns))
    return tuple(entries)


def make_record(job: Job, cfg: CutoutConfig, stat: tuple[int, int] | None, status: str, *,
                outputs: tuple[Output, ...] = (), seconds: float = 0.0, error: str | None = None,
                stages: dict[str, float] | None = None) -> Record:
    size, mtime = stat if stat is not None else (None, None)
    return Record(job.source, job.stem.as_posix(), size, mtime, status, outputs, round(seconds, 3), error,
                  {k: round(v, 3) for k, v in (stages or {}).items()}, cfg.settings_key(), cfg.max_pixels,
                  round(time.time(), 3))


class Manifest:
    """The latest record of each (source, output stem) in --out, and the appender of new ones."""

    def __init__(self, out: Path) -> None:
        self.out = out
        self.path = out / MANIFEST_NAME
        self.latest: dict[tuple[str, str], Record] = {}
        self._read()

    def _read(self) -> None:
        try:
            data = self.path.read_bytes()
        except FileNotFoundError:
            return
        for line in data.decode("utf-8", "replace").splitlines():
            try:
                record = Record.from_json(line)
            except (ValueError, TypeError):  # a line cut by a full disk: that input is redone
                continue
            self.latest[(record.source, record.stem)] = record
        if data and not data.endswith(b"\n"):
            append_line(self.path, "")  # a cut last line is closed, never joined to the next

    def append(self, record: Record) -> None:
        append_line(self.path, record.to_json())
        self.latest[(record.source, record.stem)] = record

    def state(self, job: Job, cfg: CutoutConfig, stat: tuple[int, int] | None, outputs: list[Path]) -> str | None:
        """DONE when every output of ``job`` was made from the source as it is now, under these
        settings, and is unchanged since; FAILED when the same source failed under the same
        settings and pixel budget; None otherwise (to do)."""
        record = self.latest.get((job.source, job.stem.as_posix()))
        if record is None or stat is None or (record.size, record.mtime_ns) != tuple(stat) \
                or record.settings != cfg.settings_key():
            return None
        if record.status == FAILED:
            return FAILED if record.max_pixels == cfg.max_pixels else None
        if record.status != DONE:
            return None
        wanted = [p.relative_to(cfg.out).as_posix() for p in outputs]
        if [o.path for o in record.outputs] != wanted:
            return None
        for entry in record.outputs:
            try:
                st = os.stat(cfg.out / entry.path)
            except OSError:
                return None
            if (st.st_size, st.st_mtime_ns) != (entry.bytes, entry.mtime_ns):
                return None
        return DONE
