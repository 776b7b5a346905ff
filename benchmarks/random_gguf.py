"""A model of the same shape and tokenizer as a real GGUF, with random weights (speed and crash
checks on machines that cannot download weights).

    python benchmarks/random_gguf.py skeleton REAL.gguf skel.gguf   # metadata + shapes, ~2 MB
    python benchmarks/random_gguf.py build skel.gguf random.gguf    # random F16 weights

Why two steps: the skeleton is small enough to copy to a machine without network, where the
full-size model is then built in seconds.
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from humpback_lite.adapters import _copy_fields  # noqa: E402

SHAPES_KEY = "humpback.skeleton.shapes"


def skeleton(real: Path, out: Path) -> None:
    import gguf

    reader = gguf.GGUFReader(str(real))
    arch = reader.fields["general.architecture"].contents()
    shapes = [[t.name, [int(x) for x in reversed(t.shape)]] for t in reader.tensors]
    writer = gguf.GGUFWriter(str(out), arch)
    _copy_fields(reader, writer)
    writer.add_string(SHAPES_KEY, json.dumps(shapes))
    writer.write_header_to_file()
    writer.write_kv_data_to_file()
    writer.write_tensors_to_file()
    writer.close()


def build(skel: Path, out: Path, seed: int = 0) -> None:
    import gguf

    reader = gguf.GGUFReader(str(skel))
    arch = reader.fields["general.architecture"].contents()
    shapes = json.loads(reader.fields[SHAPES_KEY].contents())
    del reader.fields[SHAPES_KEY]
    reader.fields.pop("general.file_type", None)  # the weights are F16 now
    rng = np.random.default_rng(seed)
    writer = gguf.GGUFWriter(str(out), arch)
    _copy_fields(reader, writer)
    writer.add_file_type(gguf.LlamaFileType.MOSTLY_F16)
    for name, shape in shapes:
        if name.endswith("norm.weight"):
            data = np.ones(shape, dtype=np.float32)  # norms stay float32 in llama.cpp's files
        else:
            data = (rng.standard_normal(shape, dtype=np.float32) * 0.02).astype(np.float16)
        writer.add_tensor(name, data)
    writer.write_header_to_file()
    writer.write_kv_data_to_file()
    writer.write_tensors_to_file()
    writer.close()


if __name__ == "__main__":
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("mode", choices=["skeleton", "build"])
    ap.add_argument("src", type=Path)
    ap.add_argument("out", type=Path)
    a = ap.parse_args()
    (skeleton if a.mode == "skeleton" else build)(a.src, a.out)
    print(f"{a.out}: {a.out.stat().st_size / 2**20:.1f} MiB")
