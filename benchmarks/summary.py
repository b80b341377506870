"""Run the benchmarks and print one table: model, dtype, size, seconds, peak memory, ratio to a peer.

    python benchmarks/summary.py                      # everything (about 15 minutes on a quiet 2-core CPU)
    python benchmarks/summary.py --only pdfnet birefnet
    python benchmarks/summary.py --readme             # also rewrite README.md's Performance table
    python benchmarks/summary.py --only pdfnet --readme   # ... only the rows these runs produce

Each benchmark script appends its rows to one file (``--summary PATH``, see ``measure.report``);
the official PDFNet code and ComfyUI core's BiRefNet are timed beside ours in the same run when they
are installed: ``PDFNET_OFFICIAL_DIR`` (an export of Tennine2077/PDFNet) and ``COMFY_DIR``.
"""
from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
README_START = "<!-- performance-table:start (benchmarks/summary.py --readme) -->"
README_END = "<!-- performance-table:end -->"


def _runs() -> dict[str, list[list[str]]]:
    """Benchmark name -> the argument lists of its runs (the same CPU-sized defaults as the README)."""
    official = os.environ.get("PDFNET_OFFICIAL_DIR")
    comfy = os.environ.get("COMFY_DIR")
    return {
        # three alternating rounds, medians: the official code's time alone moved 34-49 s between runs
        "pdfnet": [["bench_pdfnet.py", "--sizes", "1024", "--dtype", "fp32", "bf16", "--rounds", "3",
                    *(["--official", official] if official else [])],
                   ["bench_pdfnet.py", "--sizes", "1024", "--pipeline", "vits"]],
        "birefnet": [["bench_birefnet.py", "--models", "swin_v1_l",
                      *(["--comfy", comfy, "--rounds", "3"] if comfy else [])]],
        "depth": [["bench_depth.py", "--repeat", "2"]],
        "segrefiner": [["bench_segrefiner.py", "--size", "2048", "--repeats", "1"]],
        "segrefiner-bf16": [["bench_segrefiner.py", "--size", "2048", "--repeats", "1", "--patch-dtype", "bf16"]],
        "photo": [["bench_photo.py"]],
        # 24 photos of mixed sizes (a quarter of their full size keeps a CPU run to minutes)
        "batch": [["bench_batch.py", "--rounds", "1", "--scale", "0.25"]],
    }


def table(rows: list[dict]) -> str:
    lines = ["| model | dtype | size | seconds | peak memory | compared with |", "|---|---|---|---|---|---|"]
    def cell(text) -> str:
        return str(text or "").replace("|", "\\|")   # a pipe would end the Markdown cell

    for r in rows:
        lines.append(f"| {cell(r['model'])} | {cell(r['dtype'])} | {cell(r['size'])} | {r['seconds']:.1f} | "
                     f"{r['peak_gib']:.2f} GiB | {cell(r['versus'])} |")
    return "\n".join(lines)


def rewrite_readme(readme: Path, rows: list[dict], replace_all: bool) -> None:
    """Write ``rows`` into the README's table: the whole table, or (``replace_all`` false, after
    ``--only``) just the rows of the same model, dtype and size, keeping the others in place."""
    content = readme.read_text()
    start, end = content.find(README_START), content.find(README_END)
    if start < 0 or end < start:
        raise SystemExit(f"{readme} has no {README_START} ... {README_END} block to rewrite")
    lines = [table(rows)]
    if not replace_all:
        fresh = {(r["model"], r["dtype"], r["size"]): table([r]).splitlines()[-1] for r in rows}
        kept = []
        for line in content[start + len(README_START):end].strip().splitlines():
            cells = [c.strip() for c in line.strip("|").split("|")]
            key = tuple(cells[:3]) if len(cells) >= 3 else None
            kept.append(fresh.pop(key, line))
        lines = kept + list(fresh.values())
    readme.write_text(content[: start + len(README_START)] + "\n" + "\n".join(lines) + "\n" + content[end:])


def main() -> int:
    runs = _runs()
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--only", nargs="+", choices=list(runs), default=list(runs))
    p.add_argument("--readme", action="store_true", help="rewrite the table in README.md's Performance section")
    args = p.parse_args()
    with tempfile.TemporaryDirectory(prefix="pdfnet_summary_") as scratch:
        rows_file = Path(scratch) / "rows.jsonl"
        rows_file.touch()
        failed = []
        for name in args.only:
            for argv in runs[name]:
                t0 = time.perf_counter()
                cmd = [sys.executable, str(ROOT / "benchmarks" / argv[0]), *argv[1:], "--summary", str(rows_file)]
                print("$ " + " ".join(cmd[1:]), flush=True)
                proc = subprocess.run(cmd, cwd=ROOT)
                print(f"# {time.perf_counter() - t0:.0f} s", flush=True)
                if proc.returncode:
                    failed.append(" ".join(argv))
        rows = [json.loads(line) for line in rows_file.read_text().splitlines() if line.strip()]
    text = table(rows)
    print("\n" + text)
    if failed:
        print("\nfailed: " + "; ".join(failed), file=sys.stderr)
    if args.readme and rows:
        rewrite_readme(ROOT / "README.md", rows, replace_all=set(args.only) == set(runs))
        print("README.md Performance table rewritten")
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
