"""The reference fixtures benchmarks/gpu_check.py reads, and their copy into the checkout.

A lent GPU machine gets the working tree and the ignored paths a run names in ``carry``, nothing
beside the checkout.  ``prepare`` copies the files below (a subset of the official-code fixtures)
into an ignored folder of the checkout, ``.gpu_reference/`` by default, with a MANIFEST.json of
sizes and sha256; ``verify`` checks such a copy where it is read.  Standard library only, so it runs
with any python (no torch needed).

    python benchmarks/gpu_check_fixtures.py --src DIR --dest .gpu_reference   # what prepare_gpu_check.sh runs
    python benchmarks/gpu_check_fixtures.py --verify .gpu_reference
"""
from __future__ import annotations

import argparse
import hashlib
import json
import shutil
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
DEFAULT_DEST = ROOT / ".gpu_reference"
MANIFEST = "MANIFEST.json"
# The carry limit of a lent machine is 64 MiB for the working tree and every carried path together.
SIZE_LIMIT = 40 * 2**20


def _pdfnet_case(case: str, inputs: bool = True) -> list[str]:
    files = [f"pdfnet/{case}/logits.npy", f"pdfnet/{case}/meta.json"]
    files += [f"pdfnet/{case}/side_{k}.npy" for k in range(1, 6)]
    if inputs:
        files += [f"pdfnet/{case}/image_u8.npy", f"pdfnet/{case}/depth_u8.npy"]
    return files


FIXTURES: tuple[str, ...] = tuple(
    # PDFNet (current code v2 at 256² and 1024², first release v1 at 256²): keys for the weight recipe,
    # u8 inputs (model inputs are rebuilt from them and checked against meta.json's hashes), logits
    ["pdfnet/keys.json"] + _pdfnet_case("case256") + _pdfnet_case("case1024") + _pdfnet_case("v1")
    # Depth-Anything-V2 Small: forwards at 266² and 518², the whole estimate at 300x400
    + ["dam2/keys_vits.json",
       "dam2/vits_s0_sq266_input_1x3x266x266.npy", "dam2/vits_s0_sq266_forward_1x266x266.npy",
       "dam2/vits_s0_sq518_input_1x3x518x518.npy", "dam2/vits_s0_sq518_forward_1x518x518.npy",
       "dam2/vits_s0_image_300x400_rgb_u8.npy", "dam2/vits_s0_infer_300x400.npy"]
    # BiRefNet Swin-T (both patch orders) and Swin-L at 256²
    + ["birefnet/keys_swin_v1_t.json", "birefnet/keys_swin_v1_l.json", "birefnet/input_A_256x256.npy",
       "birefnet/swin_v1_t_seed0_256x256_logits_einops.npy", "birefnet/swin_v1_t_seed0_256x256_logits_legacy.npy",
       "birefnet/swin_v1_l_seed0_256x256_logits_einops.npy"]
    # SegRefiner: one UNet forward (narrow and full width), LR instance mode and HR mode end to end
    + ["segrefiner/keys.json", "segrefiner/keys_narrow.json", "segrefiner/meta.json"]
    + [f"segrefiner/{p}fwd_{n}.npy" for p in ("", "full_") for n in ("image", "mask", "t", "logits")]
    + [f"segrefiner/ins_{n}.npy" for n in ("image", "coarse", "final")]
    + [f"segrefiner/ins_noise_t{t}.npy" for t in (5, 4, 3, 2, 1)]
    + [f"segrefiner/hr_{n}.npy" for n in ("image", "coarse", "final")]
    + [f"segrefiner/hr_noise_t{t}.npy" for t in (5, 4, 3, 2)]
)


def _sha256(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


def prepare(src: Path, dest: Path) -> dict:
    """Copy FIXTURES from ``src`` into ``dest`` (emptied first) and write its manifest."""
    src, dest = Path(src), Path(dest)
    missing = [f for f in FIXTURES if not (src / f).is_file()]
    if missing:
        raise SystemExit(f"{src} lacks {len(missing)} fixture(s), first {missing[:3]}: is it the reference folder?")
    if dest.exists():
        shutil.rmtree(dest)
    files = {}
    for name in FIXTURES:
        (dest / name).parent.mkdir(parents=True, exist_ok=True)
        shutil.copyfile(src / name, dest / name)
        files[name] = {"bytes": (dest / name).stat().st_size, "sha256": _sha256(dest / name)}
    manifest = {"source": str(src.resolve()), "bytes": sum(f["bytes"] for f in files.values()), "files": files}
    (dest / MANIFEST).write_text(json.dumps(manifest, indent=1))
    if manifest["bytes"] > SIZE_LIMIT:
        raise SystemExit(f"{dest} holds {manifest['bytes'] / 2**20:.1f} MiB, over the {SIZE_LIMIT / 2**20:.0f} MiB "
                         "kept for it (a lent machine takes 64 MiB with the working tree)")
    return manifest


def verify(folder: Path) -> list[str]:
    """Problems of a prepared copy (missing manifest or file, size or hash mismatch); empty if none."""
    folder = Path(folder)
    if not (folder / MANIFEST).is_file():
        return [f"{folder / MANIFEST} is missing: run benchmarks/prepare_gpu_check.sh on the development machine"]
    files = json.loads((folder / MANIFEST).read_text())["files"]
    problems = [f"{name}: not in the manifest" for name in FIXTURES if name not in files]
    for name, facts in files.items():
        path = folder / name
        if not path.is_file():
            problems.append(f"{name}: missing")
        elif path.stat().st_size != facts["bytes"] or _sha256(path) != facts["sha256"]:
            problems.append(f"{name}: size or sha256 differs from the manifest")
    return problems


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--src", type=Path, help="the reference fixtures folder to copy from")
    p.add_argument("--dest", type=Path, default=DEFAULT_DEST, help="where to copy them (default: .gpu_reference)")
    p.add_argument("--verify", type=Path, metavar="DIR", help="only check a prepared copy")
    args = p.parse_args(argv)
    if args.verify:
        problems = verify(args.verify)
        for line in problems:
            print(line)
        return 1 if problems else 0
    if args.src is None:
        p.error("--src is required to prepare a copy")
    manifest = prepare(args.src, args.dest)
    print(f"copied {len(manifest['files'])} files, {manifest['bytes'] / 2**20:.2f} MiB, into {args.dest}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
