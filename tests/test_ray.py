"""`--engine ray`: a local Ray cluster started in the test gives the same files and manifest records
as the local engine — with bad files among the images and a worker that dies mid-run."""
from __future__ import annotations

import json
import os
import warnings
from pathlib import Path

import numpy as np
import pytest

ray = pytest.importorskip("ray")
pytest.importorskip("ray.data")

from attnviz.pipeline import run  # noqa: E402
from attnviz.pipeline.distributed import RayOptions  # noqa: E402
from attnviz.report.outputs import Style  # noqa: E402
from tests.conftest import photo  # noqa: E402

ROOT = Path(__file__).resolve().parents[1]
pytestmark = pytest.mark.ray
N = 40


@pytest.fixture(scope="module")
def cluster(tmp_path_factory):
    marker = tmp_path_factory.mktemp("die") / "died"
    env = {"PYTHONPATH": str(ROOT), "ATTNVIZ_TEST_DIE_ONCE": str(marker),
           "ATTNVIZ_TEST_DRIVER": str(os.getpid())}
    ray.init(num_cpus=2, include_dashboard=False, log_to_driver=False, runtime_env={"env_vars": env})
    yield marker
    ray.shutdown()


@pytest.fixture(scope="module")
def photos(tmp_path_factory):
    root = tmp_path_factory.mktemp("photos")
    for i in range(N):
        photo(40 + 3 * i, 50 + (i % 7) * 5, i).save(root / f"p{i:02d}.png")
    (root / "p05_notes.png").write_bytes(b"not an image at all")
    (root / "p17_cut.jpg").write_bytes(b"\xff\xd8\xff\xe0" + b"\0" * 20)
    return root


def _run(photos: Path, out: Path, engine: str, backbone: str = "model:tests.models:cbam_net"):
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        return run([photos], out, backbone=backbone, batch_size=4, style=Style(size=64), engine=engine,
                   ray=RayOptions(workers=2) if engine == "ray" else None)


def _same(a: Path, b: Path) -> None:
    ma, mb = (json.loads((d / "manifest.json").read_text()) for d in (a, b))
    assert ma["images"] == mb["images"] and ma["fingerprint"] == mb["fingerprint"]
    for entry in ma["images"]:
        if entry["status"] != "ok":
            continue
        na, nb = np.load(a / entry["output"] / "maps.npz"), np.load(b / entry["output"] / "maps.npz")
        assert sorted(na.files) == sorted(nb.files)
        for key in na.files:
            np.testing.assert_array_equal(na[key], nb[key])
        for f in entry["files"]:
            assert (a / entry["output"] / f).read_bytes() == (b / entry["output"] / f).read_bytes(), f


def test_ray_equals_local_with_bad_files(cluster, photos, tmp_path):
    local = _run(photos, tmp_path / "local", "local")
    remote = _run(photos, tmp_path / "ray", "ray")
    assert len(local.results) == len(remote.results) == N + 2
    assert sorted(r.source for r in remote.failed) == ["p05_notes.png", "p17_cut.jpg"]
    _same(tmp_path / "local", tmp_path / "ray")
    assert not (tmp_path / "ray" / ".attnviz.lock").exists()


def test_a_worker_that_dies_loses_nothing(cluster, photos, tmp_path):
    assert not cluster.exists()
    local = _run(photos, tmp_path / "local", "local")
    remote = _run(photos, tmp_path / "ray", "ray", backbone="model:tests.models:die_once_net")
    assert cluster.exists()                        # a worker did die mid-run …
    assert len(remote.results) == len(local.results) == N + 2
    manifest = json.loads((tmp_path / "ray" / "manifest.json").read_text())
    assert sum(e["status"] == "ok" for e in manifest["images"]) == N      # … and nothing was lost
    local_m = json.loads((tmp_path / "local" / "manifest.json").read_text())
    strip = lambda m: [{k: v for k, v in e.items()} for e in m["images"]]   # noqa: E731
    assert [e["source"] for e in strip(manifest)] == [e["source"] for e in strip(local_m)]
    for a, b in zip(manifest["images"], local_m["images"]):
        assert a["maps"] == b["maps"] and a["predictions"] == b["predictions"]


def test_ray_needs_a_seed_for_random_weights(cluster, photos, tmp_path):
    from attnviz.errors import AttnvizError
    with pytest.raises(AttnvizError, match="--seed"):
        run([photos], tmp_path / "o", backbone="resnet18", weights="none", input_size=64, engine="ray")
