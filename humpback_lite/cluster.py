"""Ray workers for the heavy stages (engine.executor=ray): augment and score over a cluster.

A stage cuts its items into the same resume windows it uses in process and hands over
`compute(worker, chunk, emit)`. Each Ray actor builds its worker once (an engine, or a scorer and
its engines), works whole windows and returns each window's records; the driver appends them in
window order through the stage's own JSONL appender. Files, resume and fingerprints are those of
the in-process path: the same windows on engines with the same settings write the same bytes.

Ray core actors rather than Ray Data: the unit of work is already a window of records with a
model held per worker, `ActorPool.map` streams results back in order, and it needs no pyarrow
pipeline around JSONL the stage already writes itself.
"""

from __future__ import annotations

import contextlib
from collections.abc import Callable, Iterator
from dataclasses import replace
from typing import Any

from .models import ModelError
from .recipe import EngineConfig, RayConfig

Emit = Callable[[Any, "dict | None"], None]
Compute = Callable[[Any, list, Emit], None]


def _ray():
    try:
        import ray
    except ImportError:
        raise ModelError("engine.executor=ray needs Ray: pip install 'humpback-lite[ray]'") from None
    return ray


def worker_engine_config(engine: EngineConfig, ray_cfg: RayConfig) -> EngineConfig:
    """A worker's engine settings: its llama.cpp threads are the CPUs its actor reserved."""
    return engine if engine.n_threads else replace(engine, n_threads=ray_cfg.cpus_per_worker)


class _Worker:
    """One Ray actor: holds what `make()` built and runs windows on it."""

    def __init__(self, make: Callable[[], Any]):
        self.held = make()

    def run(self, compute: Compute, chunk: list) -> list[tuple[Any, dict | None]]:
        out: list[tuple[Any, dict | None]] = []
        compute(self.held, chunk, lambda item, rec: out.append((item, rec)))
        return out

    def close(self) -> None:
        close = getattr(self.held, "close", None)
        if close:
            close()


class RayPool:
    """`map(chunks)` runs `compute` over windows on `cfg.workers` actors, yielding each window's
    (item, record) list in window order."""

    def __init__(self, cfg: RayConfig, make: Callable[[], Any], compute: Compute):
        self.cfg, self.make, self.compute = cfg, make, compute

    def map(self, chunks: list[list]) -> Iterator[list[tuple[Any, dict | None]]]:
        if not chunks:
            return
        ray = _ray()
        from ray.util import ActorPool

        if not ray.is_initialized():
            ray.init(address=self.cfg.address, include_dashboard=False, log_to_driver=False,
                     ignore_reinit_error=True)
        actor = ray.remote(num_cpus=self.cfg.cpus_per_worker, num_gpus=self.cfg.gpus_per_worker)(_Worker)
        actors = [actor.remote(self.make) for _ in range(min(self.cfg.workers, len(chunks)))]
        try:
            yield from ActorPool(actors).map(lambda a, chunk: a.run.remote(self.compute, chunk), chunks)
        finally:
            for a in actors:  # a dead actor must not hide the error that ended the map
                with contextlib.suppress(Exception):
                    ray.get(a.close.remote(), timeout=60)
                ray.kill(a)
