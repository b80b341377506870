"""The batch engine (pdfnet_core.batch) with a stand-in for the models: manifest and resume,
shards, same-size batches, progress modes, URIs and logging.  What is under test is the engine,
not the network (tests/unit/test_cli.py runs the real models)."""
from __future__ import annotations

import io
import json
import logging
import subprocess
import sys
import textwrap
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from pdfnet_core import cli
from pdfnet_core import SegmentOptions
from pdfnet_core.batch.config import CutoutConfig, Shard, UsageError
from pdfnet_core.batch.runner import run_cutout
from pdfnet_core.batch.manifest import MANIFEST_NAME, Manifest
from pdfnet_core.batch.progress import BatchProgress
from pdfnet_core.batch.stages import CutoutModels

ROOT = Path(__file__).resolve().parents[2]


class RedAlpha(CutoutModels):
    """The red channel as alpha: each output shows its source; records the batch sizes it ran."""

    def __init__(self):
        super().__init__(None, None)
        self.batches: list[int] = []

    def segment(self, images, depth, cfg, progress=None):
        self.batches.append(len(images))
        return [image[..., 0].clone() for image in images]


def _photo(path: Path, h: int, w: int, seed: int = 0) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.fromarray(np.random.default_rng(seed).integers(0, 255, (h, w, 3), dtype=np.uint8)).save(path)
    return path


def _folder(root: Path, sizes: list[tuple[int, int]]) -> Path:
    for i, (h, w) in enumerate(sizes):
        _photo(root / f"p{i:02d}.png", h, w, i)
    return root


def _cfg(src, out, **kw) -> CutoutConfig:
    segment = SegmentOptions(**{k: kw.pop(k) for k in ("size", "resize", "tta", "batch_size") if k in kw})
    return CutoutConfig(inputs=tuple(map(str, src if isinstance(src, (list, tuple)) else [src])), out=out,
                        foreground="none", mask=True, segment=segment, **kw)


def _run(cfg, models=None, stream=None) -> tuple[int, str]:
    stream = stream or io.StringIO()
    models = models or RedAlpha()
    status = run_cutout(cfg, stream=stream, load_models=lambda _: models)
    return status, stream.getvalue()


def _lines(out: Path) -> list[dict]:
    return [json.loads(line) for line in (out / MANIFEST_NAME).read_text().splitlines()]


def _outputs(out: Path) -> dict[str, bytes]:
    return {p.relative_to(out).as_posix(): p.read_bytes() for p in out.rglob("*.png")}


def test_the_manifest_has_one_line_per_input_and_a_rerun_does_nothing(tmp_path):
    src, out = _folder(tmp_path / "in", [(10, 12), (14, 10), (12, 12)]), tmp_path / "out"
    (src / "broken.png").write_bytes(b"\x89PNG\r\n\x1a\n not really")
    status, text = _run(_cfg(src, out))
    assert status == 1 and "broken.png: FAILED: not a readable image" in text
    lines = _lines(out)
    assert len(lines) == 4 and {r["status"] for r in lines} == {"done", "failed"}
    done = next(r for r in lines if r["source"].endswith("p00.png"))
    assert done["size"] == (src / "p00.png").stat().st_size and done["mtime_ns"] == (src / "p00.png").stat().st_mtime_ns
    assert [o["path"] for o in done["outputs"]] == ["p00.png", "p00_mask.png"] and done["error"] is None
    assert done["seconds"] >= 0 and "decode" in done["stages"] and "encode" in done["stages"]
    failed = next(r for r in lines if r["status"] == "failed")
    assert "not a readable image" in failed["error"] and failed["outputs"] == []

    status, text = _run(_cfg(src, out))   # failed inputs are not retried unless asked
    assert status == 1 and "skipping 3 file(s) already done" in text and "failed before" in text
    assert len(_lines(out)) == 4
    status, text = _run(_cfg(src, out, retry_failed=True))
    assert status == 1 and len(_lines(out)) == 5 and "done: 0 written" in text


def test_a_changed_source_or_output_or_setting_is_redone_and_nothing_else(tmp_path):
    src, out = _folder(tmp_path / "in", [(10, 12), (14, 10), (12, 12), (9, 9)]), tmp_path / "out"
    assert _run(_cfg(src, out))[0] == 0
    _photo(src / "p00.png", 11, 12, 99)                                   # the source changed
    (out / "p01_mask.png").write_bytes(b"")                               # an output truncated
    (out / "p02.png").unlink()                                            # an output gone
    models = RedAlpha()
    status, text = _run(_cfg(src, out), models)
    assert status == 0 and "skipping 1 file(s)" in text and "done: 3 written" in text and len(models.batches) == 3
    assert Image.open(out / "p00.png").size == (12, 11)
    status, text = _run(_cfg(src, out, batch_size=2, max_pixels=10**6))  # no effect on outputs: still done
    assert "skipping 4" in text
    status, text = _run(_cfg(src, out, size=512))                         # another network size: redone
    assert "done: 4 written" in text


def test_a_killed_run_is_resumed_with_exactly_the_missing_work(tmp_path):
    src, out = _folder(tmp_path / "in", [(10, 10), (11, 11), (12, 12), (13, 13), (14, 14)]), tmp_path / "out"
    script = textwrap.dedent(f"""
        import os, sys
        sys.path[:0] = [{str(ROOT)!r}, {str(ROOT / "tests" / "unit")!r}]
        from pathlib import Path
        from test_batch import RedAlpha, _cfg
        from pdfnet_core.batch.runner import run_cutout

        class DiesOnTheFourth(RedAlpha):
            def segment(self, images, depth, cfg, progress=None):
                if images[0].shape[0] == 13:
                    os._exit(9)       # as SIGKILL: no clean-up, no flush
                return super().segment(images, depth, cfg, progress)

        run_cutout(_cfg(Path(sys.argv[1]), Path(sys.argv[2]), prefetch=0), load_models=lambda _: DiesOnTheFourth())
    """)
    proc = subprocess.run([sys.executable, "-c", script, str(src), str(out)], capture_output=True, text=True,
                          timeout=120)
    assert proc.returncode == 9, proc.stderr
    assert [Path(r["source"]).name for r in _lines(out)] == ["p00.png", "p01.png", "p02.png"]
    models = RedAlpha()
    status, text = _run(_cfg(src, out), models)
    assert status == 0 and "skipping 3" in text and "done: 2 written" in text and len(models.batches) == 2
    assert not [p for p in out.iterdir() if p.name.startswith(".")]
    assert len(Manifest(out).latest) == 5


def test_shards_of_a_job_array_cover_every_input_once(tmp_path):
    src, out = _folder(tmp_path / "in", [(10 + i % 3, 10) for i in range(10)]), tmp_path / "out"
    for k in range(3):
        assert _run(_cfg(src, out, shard=Shard(k, 3)))[0] == 0
    lines = _lines(out)
    assert sorted(Path(r["source"]).name for r in lines) == [f"p{i:02d}.png" for i in range(10)]
    assert {r["status"] for r in lines} == {"done"}
    assert Shard.parse("2/3") == Shard(2, 3)
    for bad in ("3/3", "a/b", "1"):
        with pytest.raises(UsageError):
            Shard.parse(bad)


def test_same_size_images_are_batched_and_give_the_same_files(tmp_path):
    sizes = [(10, 12), (14, 10), (10, 12), (10, 12), (14, 10), (9, 9), (10, 12)]
    src = _folder(tmp_path / "in", sizes)
    one, many = RedAlpha(), RedAlpha()
    assert _run(_cfg(src, tmp_path / "a", prefetch=0), one)[0] == 0
    assert _run(_cfg(src, tmp_path / "b", batch_size=3), many)[0] == 0
    assert one.batches == [1] * 7 and sorted(many.batches) == [1, 1, 2, 3]
    assert _outputs(tmp_path / "a") == _outputs(tmp_path / "b")


def test_a_failing_batch_is_redone_one_by_one_to_name_the_input(tmp_path):
    class FailsOnGreen(RedAlpha):
        def segment(self, images, depth, cfg, progress=None):
            if any(float(im[0, 0, 1]) == 1.0 for im in images):
                raise MemoryError()
            return super().segment(images, depth, cfg, progress)

    src = tmp_path / "in"
    for i in range(3):
        img = np.zeros((10, 10, 3), np.uint8)
        img[0, 0, 1] = 255 if i == 1 else 0
        Image.fromarray(img).save(src / f"p{i}.png") if src.exists() else (src.mkdir(), Image.fromarray(img).save(src / f"p{i}.png"))
    status, text = _run(_cfg(src, tmp_path / "out", batch_size=3), FailsOnGreen())
    assert status == 1 and "p1.png: FAILED: out of memory" in text and "done: 2 written" in text


def test_progress_plain_quiet_and_bar(tmp_path):
    plain = io.StringIO()
    p = BatchProgress(3, stream=plain, slow_seconds=0.0)
    p.stage("a.png", "depth")
    assert "  a.png: depth (0 s so far)" in plain.getvalue()
    p.finished("a.png", "out/a.png", 1.5, {"decode": 0.5, "depth": 0.25, "segmentation": 0.75})
    assert "[1/3] a.png -> out/a.png (1.5 s)" in plain.getvalue() and "img/s, ETA" in plain.getvalue()
    assert "a.png: decode 0.5 s, depth 0.2 s, segmentation 0.8 s" in plain.getvalue()
    quiet = io.StringIO()
    q = BatchProgress(2, quiet=True, stream=quiet)
    q.note("hello")
    q.finished("a.png", "out/a.png", 1.0)
    q.finished("b.png", "no good", 1.0, failed=True)
    assert quiet.getvalue() == "[2/2] b.png: FAILED: no good\n"

    class Terminal(io.StringIO):
        def isatty(self):
            return True

    term = Terminal()
    bar = BatchProgress(2, stream=term)
    bar.stage("a.png", "segmentation")
    bar.finished("a.png", "out/a.png", 0.1)
    bar.close()
    assert "1/2" in term.getvalue() and "img/s" in term.getvalue() and "a.png: segmentation" in term.getvalue()
    assert "[1/2]" not in term.getvalue()   # the bar replaces the per-file lines


def test_quiet_run_prints_only_failures(tmp_path):
    src = _folder(tmp_path / "in", [(10, 10)])
    (src / "broken.png").write_bytes(b"nope")
    status, text = _run(_cfg(src, tmp_path / "out", quiet=True))
    assert status == 1 and "p00" not in text and "broken.png: FAILED" in text


def test_a_pyarrow_uri_gives_the_files_a_local_path_gives(tmp_path):
    pytest.importorskip("pyarrow")
    src = _folder(tmp_path / "in", [(10, 12), (12, 10)])
    (src / "sub").mkdir()
    _photo(src / "sub" / "deep.png", 9, 9)
    assert _run(_cfg(src, tmp_path / "local", recursive=True))[0] == 0
    assert _run(_cfg(src.as_uri(), tmp_path / "uri", recursive=True))[0] == 0
    assert _outputs(tmp_path / "local") == _outputs(tmp_path / "uri") and "sub/deep.png" in _outputs(tmp_path / "uri")
    assert _lines(tmp_path / "uri")[0]["source"].startswith("file://")


def test_cli_flags_reach_the_config_and_bad_ones_are_usage_errors(capsys):
    args = cli._parser().parse_args(["cutout", "a.png", "--out", "o", "--batch-size", "4", "--shard", "1/3",
                                     "--quiet", "--retry-failed", "--engine", "ray", "--workers", "2",
                                     "--gpus-per-worker", "0.5", "--address", "auto"])
    cfg = cli._cutout_config(args)
    assert (cfg.segment.batch_size, cfg.shard, cfg.quiet, cfg.retry_failed) == (4, Shard(1, 3), True, True)
    assert (cfg.engine, cfg.workers, cfg.gpus_per_worker, cfg.address) == ("ray", 2, 0.5, "auto")
    assert cli.main(["cutout", "a.png", "--out", "o", "--workers", "2"]) == 2
    assert cli.main(["cutout", "a.png", "--out", "o", "--batch-size", "0"]) == 2
    assert "need --engine ray" in capsys.readouterr().err
    with pytest.raises(SystemExit) as exit_info:
        cli.main(["cutout", "a.png", "--out", "o", "--shard", "3/3"])
    assert exit_info.value.code == 2 and "need 0 <= K < N" in capsys.readouterr().err


def test_a_library_logger_with_its_own_handler_is_printed_once(capsys, monkeypatch):
    monkeypatch.setattr(logging.root, "handlers", [])   # as in a fresh process (pytest adds its own)
    cli._configure_logging()
    own = io.StringIO()
    hub = logging.getLogger("fake_hub_library")
    handler = logging.StreamHandler(own)
    hub.addHandler(handler)
    try:
        hub.warning("retrying in 1 s")
        logging.getLogger("pdfnet_core.test").warning("ours")
    finally:
        hub.removeHandler(handler)
    err = capsys.readouterr().err
    assert own.getvalue() == "retrying in 1 s\n" and "retrying" not in err
    assert "WARNING pdfnet_core.test: ours" in err


def test_manifest_lines_are_whole_after_a_cut_line(tmp_path):
    from pdfnet_core.atomic_files import append_line

    path = tmp_path / MANIFEST_NAME
    path.write_bytes(b'{"source": "a", "stem": "a", "status": "do')     # a line cut by a full disk
    manifest = Manifest(tmp_path)
    assert manifest.latest == {}
    append_line(path, '{"x": 1}')
    assert path.read_text().splitlines()[-1] == '{"x": 1}'
