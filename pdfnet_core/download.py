"""Make a known model file present in a models folder: use it if there, else (opt-in) fetch it.

Downloads go through ``huggingface_hub.hf_hub_download`` into a private temporary directory inside
the target folder (same file system, so the final ``os.replace`` is atomic), are checked against the
registry's size and sha256 where known, and only then appear under their real name.  A failure or
an interruption removes the temporary directory, so a models folder never holds a half file under a
weight-file name; a process killed outright leaves its staging folder (named with its pid),
which the next download of that file removes.  Every failure is a ``ModelDownloadError`` that
names the URL and the folder in which to place the file by hand.
"""
from __future__ import annotations

import glob
import hashlib
import logging
import os
import re
import shutil
import tempfile
import time
from pathlib import Path

from .atomic_files import STALE_AGE, process_alive
from .families import lookup
from .specs import ModelEntry, hf_url

log = logging.getLogger("pdfnet_core")

_CHUNK_BYTES = 1 << 20
# huggingface_hub's own reading of HF_HUB_OFFLINE accepts these (case-insensitive).
_TRUE_VALUES = frozenset({"1", "on", "yes", "true", "y"})


class ModelDownloadError(RuntimeError):
    """A model file is missing, wrong, or could not be fetched; the message says what to do."""

    def __init__(self, message: str, *, filename: str | None = None, folder: Path | None = None,
                 url: str | None = None) -> None:
        super().__init__(message)
        self.filename = filename
        self.folder = folder
        self.url = url


class ModelFileMissingError(ModelDownloadError):
    """The file is not in the folder and was not fetched (download disabled, offline, or unknown name)."""


class UnsafeModelNameError(ModelDownloadError, ValueError):
    """A model name that could point outside its models folder."""


def model_name_problem(name: str, subfolders: bool = False) -> str | None:
    """Why ``name`` cannot name a file inside a models folder, or None if it can.

    The one rule for model names: refused are empty names, NUL, absolute paths, drive letters and
    other colons (Windows drives, NTFS alternate streams), and '.'/'..'/empty path parts.  With
    ``subfolders`` a name may have folder parts (ComfyUI lists files in sub-folders as ``sub/name.pth``);
    without, it must be a bare file name (what a download writes).
    """
    if not isinstance(name, str) or not name.strip():
        return "is empty"
    if "\x00" in name:
        return "contains a NUL character"
    if os.path.isabs(name) or name.startswith(("/", "\\")) or re.match(r"^[A-Za-z]:", name):
        return "is an absolute path"
    if ":" in name:
        return "contains ':' (a drive letter or stream name)"
    parts = re.split(r"[\\/]", name)
    if len(parts) > 1 and not subfolders:
        return "contains a path separator"
    if any(not part or set(part) == {"."} for part in parts):
        return "has '.', '..' or empty path parts"
    return None


def validate_model_name(name: str) -> str:
    """Return ``name`` if it is a bare file name that stays inside any folder; raise otherwise."""
    problem = model_name_problem(name)
    if problem:
        raise UnsafeModelNameError(f"refusing model name {name!r}: it {problem}; a model name must be a plain "
                                   "file name inside its models folder", filename=name if isinstance(name, str) else None)
    return name


def _inside(folder: Path, name: str) -> Path:
    # Checked lexically, not with resolve(): symlinked model files are a normal set-up and are the
    # user's choice; what must not happen is a *name* leading elsewhere.
    target = folder / validate_model_name(name)
    if target.parent != folder:
        raise UnsafeModelNameError(f"refusing model name {name!r}: it does not name a file directly in {folder}",
                                   filename=name)
    return target


def offline_from_env() -> bool:
    """True when HF_HUB_OFFLINE asks for no network access (read at call time, not import time)."""
    return os.environ.get("HF_HUB_OFFLINE", "").strip().lower() in _TRUE_VALUES


def sha256_file(path: str | os.PathLike, chunk_bytes: int = _CHUNK_BYTES) -> str:
    """Hex sha256 of a file, read in chunks so multi-GB weights never sit in memory at once."""
    digest = hashlib.sha256()
    with open(path, "rb") as fh:
        while chunk := fh.read(chunk_bytes):
            digest.update(chunk)
    return digest.hexdigest()


def _by_hand(entry: ModelEntry, folder: Path) -> str:
    return f"download {hf_url(entry)} by hand and place it in {folder} as {entry.filename}"


def _error(cls: type[ModelDownloadError], entry: ModelEntry, folder: Path, what: str,
           joiner: str = "; ") -> ModelDownloadError:
    return cls(f"{what}{joiner}{_by_hand(entry, folder)}", filename=entry.filename, folder=folder, url=hf_url(entry))


def _size_problem(path: Path, entry: ModelEntry) -> str | None:
    if entry.size_bytes is None:
        return None
    actual = path.stat().st_size
    if actual == entry.size_bytes:
        return None
    return f"has {actual} bytes but the published file has {entry.size_bytes}"


def _verify_download(partial: Path, entry: ModelEntry, folder: Path) -> None:
    problem = _size_problem(partial, entry)
    if problem is None and entry.sha256 is not None:
        actual = sha256_file(partial)
        if actual != entry.sha256:
            problem = f"has sha256 {actual} but the published file has {entry.sha256}"
    if problem:
        raise _error(ModelDownloadError, entry, folder,
                     f"the downloaded {entry.filename} {problem}: the download is corrupted or the hub "
                     "file changed; nothing was saved")


def _existing(target: Path, entry: ModelEntry | None, folder: Path) -> Path | None:
    if not target.exists():
        return None
    if not target.is_file():
        raise ModelDownloadError(f"{target} exists but is not a file; remove or rename it",
                                 filename=target.name, folder=folder)
    # Size only: hashing a GB-sized file on every graph run would cost seconds each time.
    problem = None if entry is None else _size_problem(target, entry)
    if problem:
        raise ModelDownloadError(f"{target} {problem}: it is incomplete or a different file. Delete it so it can "
                                 f"be downloaded again, or {_by_hand(entry, folder)}",
                                 filename=entry.filename, folder=folder, url=hf_url(entry))
    return target


def ensure_model_file(entry_or_name: ModelEntry | str, folder: str | os.PathLike, allow_download: bool,
                      offline: bool | None = None) -> Path:
    """Return the path of the model file in ``folder``, downloading it first if allowed.

    ``entry_or_name``: a registry entry, or a file name (looked up in the registry; an unknown name
    is still returned when the file is present).  ``offline=None`` follows HF_HUB_OFFLINE; an
    explicit True/False overrides it.  Raises ModelFileMissingError when the file is absent and no
    download is allowed or possible, ModelDownloadError when a download fails or does not verify,
    UnsafeModelNameError for a name that would leave ``folder``.
    """
    folder = Path(os.fspath(folder))
    if isinstance(entry_or_name, ModelEntry):
        entry: ModelEntry | None = entry_or_name
        name = entry_or_name.filename
    else:
        name = entry_or_name
        entry = lookup(validate_model_name(name))
    target = _inside(folder, name)

    found = _existing(target, entry, folder)
    if found is not None:
        return found
    if entry is None:
        raise ModelFileMissingError(f"{name} is not in {folder}, and it is not a model this pack knows how to "
                                    f"download; place the file in {folder}", filename=name, folder=folder)
    if not entry.on_hub:
        raise _error(ModelFileMissingError, entry, folder,
                     f"{entry.filename} is not in {folder}, and it is published only outside the Hugging Face hub, "
                     "so it cannot be downloaded automatically")
    if not allow_download:
        raise _error(ModelFileMissingError, entry, folder,
                     f"{entry.filename} is not in {folder} and downloading is off: turn on the download option",
                     joiner=", or ")
    if offline_from_env() if offline is None else offline:
        raise _error(ModelFileMissingError, entry, folder,
                     f"{entry.filename} is not in {folder} and offline mode (HF_HUB_OFFLINE or offline=True) "
                     "forbids downloading it")
    return _download(entry, folder, target)


# A staging folder is ".<file name>.<pid>.<random>.download"; one whose process is gone (a download
# killed mid-way: SIGKILL, power loss) is removed by the next download of that file.  One whose pid
# is alive is another process's download in progress, unless older than this (the pid was reused).
STAGING_SUFFIX = ".download"


def _staging_pid(name: str, filename: str) -> int | None:
    rest = name[len(f".{filename}."):]
    head = rest.split(".", 1)[0]
    return int(head) if head.isdigit() else None


def clean_stale_staging(folder: Path, filename: str) -> list[Path]:
    """Remove the staging folders of ``filename`` left in ``folder`` by downloads that died; returns them."""

    removed = []
    for path in folder.glob(glob.escape(f".{filename}.") + "*" + STAGING_SUFFIX):
        try:
            if path.is_symlink() or not path.is_dir():
                continue
            age = time.time() - path.stat().st_mtime
        except OSError:
            continue
        pid = _staging_pid(path.name, filename)
        # a pid that cannot be asked about (Windows) counts as alive: only age removes its folder
        if pid == os.getpid() or (pid is not None and process_alive(pid) is not False and age < STALE_AGE):
            continue
        if pid is None and age < STALE_AGE:  # an older layout's name: only by age
            continue
        log.info("removing %s, left by an interrupted download", path)
        shutil.rmtree(path, ignore_errors=True)
        removed.append(path)
    return removed


def _download(entry: ModelEntry, folder: Path, target: Path) -> Path:
    try:
        folder.mkdir(parents=True, exist_ok=True)
        clean_stale_staging(folder, entry.filename)
        staging = Path(tempfile.mkdtemp(prefix=f".{entry.filename}.{os.getpid()}.", suffix=STAGING_SUFFIX,
                                        dir=folder))
    except OSError as exc:
        raise _error(ModelDownloadError, entry, folder, f"cannot write to {folder} ({exc})") from exc
    url = hf_url(entry)
    log.info("downloading %s into %s", url, folder)
    try:
        fetched = _fetch(entry, staging, folder)
        # Off its weight-file name at once: should the process die before the final rename, what is
        # left in the hidden staging folder is not listed by model pickers that filter on extension.
        partial = staging / f"{entry.filename}.partial"
        if staging.resolve() in fetched.resolve().parents:
            os.replace(fetched, partial)
        else:  # a hub client that links into its own cache: leave its copy alone
            shutil.copyfile(fetched, partial)
        _verify_download(partial, entry, folder)
        os.replace(partial, target)
    finally:
        shutil.rmtree(staging, ignore_errors=True)
    log.info("downloaded %s (%d bytes)", target, target.stat().st_size)
    return target


def _fetch(entry: ModelEntry, staging: Path, folder: Path) -> Path:
    try:
        # Deferred: a heavy import that only a download needs; looked up at call time so tests can
        # substitute the hub function.
        import huggingface_hub

        result = huggingface_hub.hf_hub_download(repo_id=entry.repo_id, filename=entry.hf_filename,
                                                 revision=entry.revision, local_dir=staging)
    except Exception as exc:  # network, auth, missing repo, disk full: all end the same way for the user
        raise _error(ModelDownloadError, entry, folder,
                     f"downloading {entry.filename} from {entry.repo_id} failed ({type(exc).__name__}: {exc})") from exc
    fetched = Path(os.fspath(result))
    if not fetched.is_file():
        raise _error(ModelDownloadError, entry, folder,
                     f"the hub client reported {fetched} for {entry.filename}, but no such file exists")
    return fetched
