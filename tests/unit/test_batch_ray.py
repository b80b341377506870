"""``--engine ray`` on a local Ray instance (2 CPUs): the same files as the single-process engine,
and a segmentation actor that dies mid-run is restarted, its batch retried, and every input
written exactly once.  The models are the stand-in of test_batch (shipped to the workers by value)."""
from __future__ import annotations

import json
import os
import sys
from pathlib import Path

import pytest

ray = pytest.importorskip("ray")

from pdfnet_core.batch.manifest import MANIFEST_NAME  # noqa: E402
from pdfnet_core.batch.runner import run_cutout  # noqa: E402

sys.path.insert(0, str(Path(__file__).parent))
import test_batch  # noqa: E402
from test_batch import RedAlpha, _cfg, _folder, _outputs, _run  # noqa: E402

ROOT = Path(__file__).resolve().parents[2]
# When set to a path that does not exist yet, the first actor to get a batch creates it and dies at
# once (os._exit), as a node lost mid-run would.
EXIT_ONCE_ENV = "PDFNET_TEST_RAY_EXIT_ONCE"


class DiesOnce(RedAlpha):
    def segment(self, images, depth, cfg, progress=None):
        marker = os.environ.get(EXIT_ONCE_ENV)
        if marker:
            try:
                with open(marker, "x"):
                    pass
            except FileExistsError:
                pass
            else:
                os._exit(1)
        return super().segment(images, depth, cfg, progress)


def _stand_in(cfg):
    return DiesOnce()


@pytest.fixture(scope="module")
def cluster(tmp_path_factory):
    marker = tmp_path_factory.mktemp("ray") / "actor-died"
    ray.init(num_cpus=2, include_dashboard=False, logging_level="ERROR", log_to_driver=False,
             runtime_env={"env_vars": {"PYTHONPATH": str(ROOT), EXIT_ONCE_ENV: str(marker)}})
    ray.cloudpickle.register_pickle_by_value(test_batch)
    ray.cloudpickle.register_pickle_by_value(sys.modules[__name__])
    try:
        yield marker
    finally:
        ray.shutdown()


def test_ray_writes_the_files_of_the_local_engine_once_each_after_an_actor_dies(cluster, tmp_path, capsys):
    sizes = [(10, 12), (14, 10), (10, 12), (12, 9), (9, 9), (11, 11)]
    src = _folder(tmp_path / "in", sizes)
    (src / "broken.png").write_bytes(b"not an image")
    local, distributed = tmp_path / "local", tmp_path / "ray"
    assert _run(_cfg(src, local))[0] == 1

    assert not cluster.exists()
    status = run_cutout(_cfg(src, distributed, engine="ray", workers=1, batch_size=2), load_models=_stand_in)
    text = capsys.readouterr().out
    assert status == 1 and "broken.png: FAILED: not a readable image" in text
    assert cluster.exists()   # an actor died on its first batch; Ray restarted it and retried
    assert _outputs(distributed) == _outputs(local)
    lines = [json.loads(line) for line in (distributed / MANIFEST_NAME).read_text().splitlines()]
    assert sorted(Path(r["source"]).name for r in lines if r["status"] == "done") == \
        sorted(f"p{i:02d}.png" for i in range(len(sizes)))
    assert len(lines) == len(sizes) + 1
    assert not [p for p in distributed.rglob(".*")]

    status, text = _run(_cfg(src, distributed))   # the local engine reads the Ray run's manifest
    assert f"skipping {len(sizes)} file(s) already done" in text and "done: 0 written" in text
