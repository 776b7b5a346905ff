"""engine.executor=ray on a local Ray cluster: augment and score run as Ray actors and write the
bytes the in-process path writes (same windows, same engine settings)."""

import json

import pytest
import ray
from click.testing import CliRunner
from conftest import TINY

from humpback_lite import augment
from humpback_lite.cli import main
from humpback_lite.engines import factory
from humpback_lite.recipe import load_recipe
from humpback_lite.store import read_jsonl

# engine.parallel=1: one segment per window, so the six segments spread over both workers
RUN = ["rounds=1", "evaluate.enabled=false", "engine.parallel=1"]
COMPARED = ["augment/pairs.jsonl", "round_01/score/scored.jsonl", "round_01/score/checks.jsonl"]


@pytest.fixture(scope="module")
def local_cluster(hb_home):
    # after hb_home: the workers inherit its HUMPBACK_HOME, so they too leave the user's cache alone
    ray.init(num_cpus=2, include_dashboard=False, log_to_driver=False)
    yield
    ray.shutdown()


def _run(out, *extra):
    result = CliRunner().invoke(main, ["run", str(TINY), "--out", str(out), *RUN, *extra])
    assert result.exit_code == 0, result.output
    return out


@pytest.fixture(scope="module")
def ray_run(local_cluster, hb_home, hf_weights, tmp_path_factory):
    return _run(tmp_path_factory.mktemp("ray") / "run", "engine.executor=ray", "ray.workers=2")


def test_ray_executor_writes_the_same_pairs_and_scores_as_in_process(ray_run, tmp_path):
    here = _run(tmp_path / "here")
    for name in COMPARED:
        assert (ray_run / name).read_bytes() == (here / name).read_bytes(), name
    assert len(read_jsonl(ray_run / "augment" / "pairs.jsonl")) == 6
    manifest = json.loads((ray_run / "manifest.json").read_text())
    assert all(s["status"] == "done" for s in manifest["stages"].values())
    # switching the executor back changes no result: nothing reruns
    _run(ray_run)
    assert json.loads((ray_run / "manifest.json").read_text())["stages"] == manifest["stages"]


def test_a_killed_ray_augment_resumes_to_the_same_file(ray_run, tmp_path):
    """Three records and a torn line left: the Ray path completes the file as it wrote it whole."""
    whole = (ray_run / "augment" / "pairs.jsonl").read_bytes()
    lines = whole.splitlines(keepends=True)
    out = tmp_path / "pairs.jsonl"
    out.write_bytes(b"".join(lines[:3]) + lines[3][:20])
    recipe = load_recipe(TINY, RUN)
    counts = augment.run(ray_run / "corpus" / "segments.jsonl", out, recipe.augment,
                         factory("smollm2-135m", recipe.engine), ray_run / "backward" / "adapter.gguf", recipe.seed,
                         ray=recipe.ray)
    assert (counts.pairs, counts.resumed_from) == (6, 3)
    assert out.read_bytes() == whole
