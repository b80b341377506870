"""Finding the work: inputs (local paths or pyarrow filesystem URIs), their output names, shards.

An input is named by one string: a local path, or a URI any ``pyarrow.fs`` filesystem opens
(``s3://bucket/photos``, ``gs://...``, ``hdfs://...``, ``file:///...``).  pyarrow is imported
only for URIs.
"""
from __future__ import annotations

import hashlib
import os
import zlib
from dataclasses import dataclass
from pathlib import Path, PurePosixPath
from typing import BinaryIO, Iterable, Sequence

from .config import CutoutConfig, Shard

IMAGE_SUFFIXES = (".png", ".jpg", ".jpeg", ".webp", ".bmp", ".tif", ".tiff", ".gif")
NAME_MAX = 255  # bytes in one file name on every common file system


def is_uri(text: str) -> bool:
    return "://" in text


def _short_hash(text: str) -> str:
    return hashlib.sha1(os.fsencode(text)).hexdigest()[:8]


def output_name(stem: str, tag: str, suffix: str) -> str:
    """``stem + tag + suffix``, or, where that is over the 255-byte name limit, the stem cut short
    and marked with ``~`` and a hash of the whole stem (so two long names stay distinct)."""
    name = stem + tag + suffix
    if len(os.fsencode(name)) <= NAME_MAX:
        return name
    end = f"~{_short_hash(stem)}{tag}{suffix}"
    room = NAME_MAX - len(os.fsencode(end))
    return os.fsdecode(os.fsencode(stem)[:room]) + end


class OutsideOutputError(ValueError):
    """An output path that would lead outside --out (through a symbolic link or a name)."""


@dataclass(frozen=True)
class Job:
    source: str              # absolute local path or URI: the input's identity in the manifest
    stem: PurePosixPath      # output path without suffix, relative to --out
    shown: str = ""          # the input as the user named it (for messages)

    def __str__(self) -> str:
        return self.shown or self.source

    @property
    def source_stem(self) -> str:
        return PurePosixPath(self.source.replace("\\", "/")).stem

    def names(self, cfg: CutoutConfig) -> list[str]:
        """The outputs relative to --out, before any check (for finding name collisions)."""
        return [(self.stem.parent / output_name(self.stem.name, tag, suffix)).as_posix()
                for tag, suffix in cfg.output_kinds()]

    def outputs(self, cfg: CutoutConfig) -> list[Path]:
        return [self.target(cfg, tag, suffix) for tag, suffix in cfg.output_kinds()]

    def target(self, cfg: CutoutConfig, tag: str, suffix: str) -> Path:
        path = cfg.out / self.stem.parent / output_name(self.stem.name, tag, suffix)
        out = cfg.out.resolve()
        # resolve() follows symbolic links: a link inside --out (to the file or a folder above it)
        # that points elsewhere is refused, not written through or replaced.
        if out not in path.resolve().parents:
            raise OutsideOutputError(f"refusing to write {path}: it leads outside the output folder {out} "
                                     "(a symbolic link?)")
        return path


# --------------------------------------------------------------------------------------------
# sources


def open_source(source: str) -> BinaryIO:
    """A readable binary file for a local path or a pyarrow filesystem URI."""
    if not is_uri(source):
        return open(source, "rb")
    from pyarrow import fs   # deferred: only a URI input needs pyarrow (an optional extra)

    filesystem, path = fs.FileSystem.from_uri(source)
    return filesystem.open_input_file(path)


def source_stat(source: str) -> tuple[int, int]:
    """(bytes, mtime in ns) of a source: what tells a changed source from the one an output was made of."""
    if not is_uri(source):
        st = os.stat(source)
        return st.st_size, st.st_mtime_ns
    from pyarrow import fs   # deferred: only a URI input needs pyarrow (an optional extra)

    filesystem, path = fs.FileSystem.from_uri(source)
    info = filesystem.get_file_info(path)
    if info.type != fs.FileType.File:
        raise FileNotFoundError(f"{source}: no such file")
    return int(info.size or 0), int(info.mtime_ns or 0)


def _list_uri(uri: str, recursive: bool) -> list[tuple[str, PurePosixPath]] | None:
    from pyarrow import fs   # deferred: only a URI input needs pyarrow (an optional extra)

    filesystem, root = fs.FileSystem.from_uri(uri)
    scheme = uri.split("://", 1)[0]
    info = filesystem.get_file_info(root)
    if info.type == fs.FileType.File:
        return [(uri, PurePosixPath(PurePosixPath(root).stem))]
    if info.type != fs.FileType.Directory:
        return None
    found = filesystem.get_file_info(fs.FileSelector(root, recursive=recursive))
    files = sorted(i.path for i in found if i.type == fs.FileType.File and
                   PurePosixPath(i.path).suffix.lower() in IMAGE_SUFFIXES and
                   not PurePosixPath(i.path).name.startswith("."))
    base = PurePosixPath(root)
    return [(f"{scheme}://{f}", PurePosixPath(f).relative_to(base).with_suffix("")) for f in files]


def find_jobs(inputs: Iterable[str | os.PathLike], recursive: bool) -> tuple[list[Job], list[str]]:
    """Image files to process (with their output stems) and the problems met while looking."""
    jobs: list[Job] = []
    problems: list[str] = []
    seen: set[str] = set()
    for item in map(str, inputs):
        if is_uri(item):
            listed = _list_uri(item, recursive)
            if listed is None:
                problems.append(f"{item}: no such file or folder")
                continue
            triples = [(uri, stem, uri) for uri, stem in listed]
        else:
            path = Path(item)
            if path.is_dir():
                pattern = "**/*" if recursive else "*"
                files = sorted(p for p in path.glob(pattern) if p.is_file() and p.suffix.lower() in IMAGE_SUFFIXES)
                triples = [(str(f.resolve()), PurePosixPath(f.relative_to(path).with_suffix("").as_posix()), str(f))
                           for f in files]
            elif path.is_file():
                triples = [(str(path.resolve()), PurePosixPath(path.stem), item)]
            else:
                problems.append(f"{item}: no such file or folder")
                continue
        for source, stem, shown in triples:
            if source not in seen:
                seen.add(source)
                jobs.append(Job(source, stem, shown))
    return jobs, problems


def distinct_outputs(jobs: Sequence[Job], cfg: CutoutConfig) -> tuple[list[Job], list[str]]:
    """Rename the jobs whose outputs would share a file name, so nothing is silently overwritten.

    The rule (README, "Command line"): when two inputs would write the same output name
    (``a.jpg`` and ``a.png``; ``x/photo.jpg`` and ``y/photo.jpg`` without ``--recursive``; also
    names equal but for case, which are one file on Windows and macOS), *each* of them is named
    after its source extension (``a_jpg.png``, ``a_png.png``); where that still collides, a short
    hash of the source path is added too (``photo_jpg_1a2b3c4d.png``).  Inputs without a
    collision keep their plain names.  Returns the jobs and one note per renamed input.
    """
    def collisions(items: Sequence[Job]) -> set[int]:
        owner: dict[str, int] = {}
        hit: set[int] = set()
        for i, job in enumerate(items):
            for name in job.names(cfg):
                key = name.casefold()
                if key in owner and owner[key] != i:
                    hit.update((i, owner[key]))
                owner.setdefault(key, i)
        return hit

    def ext(job: Job) -> str:
        return PurePosixPath(job.source.replace("\\", "/")).suffix.lower().lstrip(".") or "file"

    def renamed_job(job: Job, *parts: str) -> Job:
        return Job(job.source, job.stem.with_name("_".join((job.stem.name, *parts))), job.shown)

    out = list(jobs)
    clash = collisions(out)
    if not clash:
        return out, []
    renamed = set(clash)
    for i in clash:
        out[i] = renamed_job(jobs[i], ext(jobs[i]))
    for _ in range(3):
        clash = collisions(out)
        if not clash:
            break
        renamed |= clash
        for i in clash:
            out[i] = renamed_job(jobs[i], ext(jobs[i]), _short_hash(jobs[i].source))
    notes = [f"note: {jobs[i]} shares its output name with another input; writing it as "
             f"{out[i].names(cfg)[0]}" for i in sorted(renamed)]
    return out, notes


def in_shard(job: Job, shard: Shard) -> bool:
    """Whether ``job`` belongs to ``shard``: by a hash of its output name, so every shard of a job
    array agrees without talking to the others, and adding inputs moves no other input."""
    return zlib.crc32(job.stem.as_posix().encode()) % shard.count == shard.index
