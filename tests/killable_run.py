"""The kill harness's subject: `humpback run` on a recipe with the fake engine and stub trainer
(tests/fakes.py), slowed by FAKE_DELAY seconds per model call so kills land inside every stage.

    python tests/killable_run.py RECIPE OUT [key=value ...]
"""

import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))

from fakes import fake_engines, fake_train_run  # noqa: E402

from humpback_lite import train  # noqa: E402
from humpback_lite.loop import Loop  # noqa: E402
from humpback_lite.recipe import load_recipe  # noqa: E402

if __name__ == "__main__":  # the corpus stage's worker processes import this file too
    train.run = fake_train_run
    loop = Loop(load_recipe(sys.argv[1], sys.argv[3:]), sys.argv[2])
    loop._engines = fake_engines()
    loop.run()
