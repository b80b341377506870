"""A rerun removes the temporary files that killed runs left in --out (their writer is gone, or the
file is older than a day), never a live writer's, never anything that is not ours."""
from __future__ import annotations

import os
import signal
import subprocess
import sys
import textwrap
import time
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

import pdfnet_core.pipeline
from pdfnet_core import atomic_files, cli
from pdfnet_core.atomic_files import TEMP_PREFIX, TEMP_SUFFIX, atomic_write, remove_stale_temporaries
from pdfnet_core.batch import stages

ROOT = Path(__file__).resolve().parents[2]
HOST = atomic_files._host()
DAY = 24 * 3600

posix_only = pytest.mark.skipif(os.name == "nt", reason="process liveness is only asked on POSIX")


@pytest.fixture(scope="module")
def dead_pid() -> int:
    """The pid of a process that has ended (and been reaped)."""
    proc = subprocess.Popen([sys.executable, "-c", "pass"])
    proc.wait(timeout=30)
    try:
        os.kill(proc.pid, 0)
    except ProcessLookupError:
        return proc.pid
    pytest.skip("the pid of the ended process was taken again at once")


def _temp(folder: Path, pid: int | None, host: str = HOST, rand: str = "ab_cd12x", age: float = 0) -> Path:
    """A temporary file as atomic_write names it (pid None: the older name without host and pid)."""
    folder.mkdir(parents=True, exist_ok=True)
    middle = rand if pid is None else f"{host}-{pid}-{rand}"
    path = folder / f"{TEMP_PREFIX}{middle}{TEMP_SUFFIX}"
    path.write_bytes(b"half a file")
    if age:
        old = time.time() - age
        os.utime(path, (old, old))
    return path


def test_the_temporary_name_tells_the_host_and_the_process(tmp_path):
    seen = []

    def write(fh):
        seen.extend(p.name for p in tmp_path.iterdir())
        fh.write(b"x")

    atomic_write(tmp_path / "a.bin", write)
    (name,) = seen
    assert name.startswith(f"{TEMP_PREFIX}{HOST}-{os.getpid()}-") and name.endswith(TEMP_SUFFIX)
    assert atomic_files._writer(name) == (HOST, os.getpid())
    assert [p.name for p in tmp_path.iterdir()] == ["a.bin"]


def test_host_names_are_made_short_and_safe(monkeypatch):
    def host(name):
        atomic_files._host.cache_clear()
        monkeypatch.setattr(atomic_files.socket, "gethostname", lambda: name)
        try:
            return atomic_files._host()
        finally:
            atomic_files._host.cache_clear()

    assert host("node-12") == "node-12" and host("n1.cluster.org") == "n1.cluster.org"
    for name in ("a/b\\c d", "", "x" * 200, "ünï", "../..", "-"):
        token = host(name)
        assert token and len(token) <= 32 and all(c.isascii() and (c.isalnum() or c in "_.-") for c in token)
        assert atomic_files._writer(f"{TEMP_PREFIX}{token}-7-abc{TEMP_SUFFIX}") == (token, 7)
    assert host("x" * 40 + "a") != host("x" * 40 + "b")   # cut names still differ
    assert host("a b") != host("a_b")


@posix_only
def test_a_dead_writers_file_is_removed_a_live_ones_kept(tmp_path, dead_pid):
    dead = _temp(tmp_path, dead_pid)
    mine = _temp(tmp_path, os.getpid(), rand="mine0000")
    sleeper = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(60)"])
    try:
        other = _temp(tmp_path, sleeper.pid, rand="other000")
        assert remove_stale_temporaries(tmp_path) == [dead]
        assert not dead.exists() and mine.exists() and other.exists()
    finally:
        sleeper.kill()
        sleeper.wait()
    assert remove_stale_temporaries(tmp_path) == [other]     # now its writer is gone too
    assert mine.exists()


@posix_only
def test_a_process_of_another_user_counts_as_alive(tmp_path, monkeypatch):
    def kill(pid, sig):
        raise PermissionError(1, "Operation not permitted")

    monkeypatch.setattr(atomic_files.os, "kill", kill)
    kept = _temp(tmp_path, 1)
    assert remove_stale_temporaries(tmp_path) == [] and kept.exists()


def test_a_file_older_than_a_day_is_removed_whoever_wrote_it(tmp_path, dead_pid):
    old_live = _temp(tmp_path, os.getpid(), rand="live0000", age=DAY + 60)
    old_foreign = _temp(tmp_path, 123, host="elsewhere", rand="fore0000", age=DAY + 60)
    old_unnamed = _temp(tmp_path, None, rand="q1w2e3r4", age=DAY + 60)
    young_live = _temp(tmp_path, os.getpid(), rand="live1111", age=DAY - 600)
    young_foreign = _temp(tmp_path, dead_pid, host="elsewhere", rand="fore1111", age=600)   # its pid means nothing here
    young_unnamed = _temp(tmp_path, None, rand="z9x8c7v6", age=30)
    assert remove_stale_temporaries(tmp_path) == sorted([old_live, old_foreign, old_unnamed])
    assert young_live.exists() and young_foreign.exists() and young_unnamed.exists()
    assert remove_stale_temporaries(tmp_path, max_age=60) == sorted([young_live, young_foreign])
    assert remove_stale_temporaries(tmp_path, max_age=10) == [young_unnamed]


def test_where_processes_cannot_be_asked_only_age_counts(tmp_path, monkeypatch, dead_pid):
    def kill(pid, sig):   # on Windows os.kill(pid, 0) would end the process
        raise AssertionError("os.kill called")

    monkeypatch.setattr(atomic_files, "_CAN_ASK", False)
    monkeypatch.setattr(atomic_files.os, "kill", kill)
    young = _temp(tmp_path, dead_pid, rand="young000")
    old = _temp(tmp_path, dead_pid, rand="old00000", age=DAY + 60)
    assert remove_stale_temporaries(tmp_path) == [old] and young.exists()


@posix_only
def test_what_is_not_ours_is_kept(tmp_path, dead_pid):
    outside = tmp_path / "outside"
    outside.mkdir()
    target = _temp(outside, dead_pid, rand="target00")
    out = tmp_path / "out"
    out.mkdir()
    names = ["a.png", f"{TEMP_PREFIX}foo", f"{TEMP_PREFIX}{HOST}-{dead_pid}-abc", "x.partial",
             f"{TEMP_PREFIX}{TEMP_SUFFIX}", f"pdfnet-{HOST}-{dead_pid}-abc{TEMP_SUFFIX}",
             f"{TEMP_PREFIX}{HOST}-{dead_pid}-abc{TEMP_SUFFIX}.png"]
    for name in names:
        (out / name).write_bytes(b"mine")
        os.utime(out / name, (0, 0))                              # old, too
    (out / f"{TEMP_PREFIX}{HOST}-{dead_pid}-dir00000{TEMP_SUFFIX}").mkdir()      # a folder of that name
    (out / f"{TEMP_PREFIX}{HOST}-{dead_pid}-link0000{TEMP_SUFFIX}").symlink_to(target)
    (out / "linked").symlink_to(outside, target_is_directory=True)          # never followed
    assert remove_stale_temporaries(out) == []
    assert target.exists() and all((out / name).read_bytes() == b"mine" for name in names)
    assert len(list(out.iterdir())) == len(names) + 3


def test_sub_folders_are_cleaned_unless_told_not_to(tmp_path):
    top = _temp(tmp_path, None, rand="top00000", age=DAY + 60)
    deep = _temp(tmp_path / "a" / "b" / "c", None, rand="deep0000", age=DAY + 60)
    assert remove_stale_temporaries(tmp_path, recursive=False) == [top] and deep.exists()
    assert remove_stale_temporaries(tmp_path) == [deep] and not deep.exists()
    assert remove_stale_temporaries(tmp_path / "missing") == []


def test_a_file_that_vanishes_meanwhile_is_skipped(tmp_path, monkeypatch):
    gone = _temp(tmp_path, None, rand="gone0000", age=DAY + 60)
    real_unlink = os.unlink

    def unlink(path, *args, **kwargs):   # another run removed it first
        real_unlink(path, *args, **kwargs)
        raise FileNotFoundError(2, "No such file or directory", path)

    monkeypatch.setattr(atomic_files.os, "unlink", unlink)
    assert remove_stale_temporaries(tmp_path) == [] and not gone.exists()


@posix_only
def test_the_file_of_a_killed_writer_is_removed(tmp_path):
    script = textwrap.dedent("""
        import sys, time
        from pathlib import Path
        from pdfnet_core.atomic_files import atomic_write

        def write(fh):
            fh.write(b"half")
            fh.flush()
            print("writing", flush=True)
            time.sleep(60)

        atomic_write(Path(sys.argv[1]), write)
    """)
    target = tmp_path / "sub" / "out.png"
    proc = subprocess.Popen([sys.executable, "-c", script, str(target)], stdout=subprocess.PIPE, text=True, cwd=ROOT)
    try:
        assert proc.stdout.readline().strip() == "writing"
        (left,) = (tmp_path / "sub").iterdir()
        assert atomic_files._writer(left.name) == (HOST, proc.pid)
        assert remove_stale_temporaries(tmp_path) == [] and left.exists()     # it still writes
        proc.send_signal(signal.SIGKILL)
        proc.wait(timeout=20)
    finally:
        if proc.poll() is None:
            proc.kill()
        proc.stdout.close()
    assert left.exists() and not target.exists()
    assert remove_stale_temporaries(tmp_path) == [left]
    assert list((tmp_path / "sub").iterdir()) == []


# --------------------------------------------------------------------------------------------
# the CLI


@pytest.fixture()
def fake_models(monkeypatch):
    monkeypatch.setattr(stages, "load_models", lambda cfg: stages.CutoutModels(object(), None))
    monkeypatch.setattr(pdfnet_core.pipeline, "segment",
                        lambda images, depth=None, model=None, **kw: [image[..., 0].clone() for image in images])


def _photo(path: Path) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.fromarray(np.random.default_rng(0).integers(0, 255, (12, 16, 3), dtype=np.uint8)).save(path)


@posix_only
def test_a_rerun_removes_what_stopped_runs_left(fake_models, tmp_path, capsys, dead_pid):
    src, out = tmp_path / "in", tmp_path / "out"
    _photo(src / "a.png")
    _photo(src / "deeper" / "b.png")
    assert cli.main(["cutout", str(src), "-r", "--out", str(out), "--foreground", "none"]) == 0
    capsys.readouterr()
    stale = [_temp(out, dead_pid), _temp(out / "deeper", dead_pid, rand="sub00000"),
             _temp(out, None, rand="oldform0", age=DAY + 60)]
    live = _temp(out / "deeper", os.getpid(), rand="live0000")
    assert cli.main(["cutout", str(src), "-r", "--out", str(out), "--foreground", "none"]) == 0
    assert "removed 3 temporary file(s) left by earlier runs that were stopped" in capsys.readouterr().out
    assert not any(p.exists() for p in stale) and live.exists()
    assert cli.main(["cutout", str(src), "-r", "--out", str(out), "--foreground", "none"]) == 0
    assert "temporary file" not in capsys.readouterr().out
