"""Data benchmark: in memory vs streamed from memory-mapped ``.npy`` files, by data size.

    python benchmarks/bench_data.py                   # Fashion-MNIST ×1, ×2, ×4; JSON + table
    python benchmarks/bench_data.py --sizes 1,2 --epochs 1 --json out.json

Fashion-MNIST's 60k training images (Debian's ``dataset-fashion-mnist``; random uint8 images of
the same shape where it is missing, with a note) are written to disk replicated 1×, 2× and 4×
as uint8 ``.npy`` arrays. Each (size, path) pair then runs in a fresh process — so its peak RSS
is its own — and trains a 784-256-10 MLP (cross-entropy, SGD, batch 128, random crop + flip
augmentation, one thread) for ``--epochs`` timed epochs after one warm-up epoch:

* ``memory``: the array is loaded whole (uint8, as kdlab keeps images) and batched by indexing;
* ``stream``: :class:`kdlab.data.stream.MappedDataset` + ``StreamBatcher`` (DataLoader workers
  read each batch's rows from the memory map).

Expected: epoch time linear in size on both paths; peak RSS growing with size in memory and flat
when streamed; the ratio of the two paths' throughputs is the price of streaming.
"""

from __future__ import annotations

import argparse
import itertools
import json
import resource
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

FASHION = Path("/usr/share/datasets/fashion-mnist")


def fashion_train() -> tuple[np.ndarray, np.ndarray, str]:
    """Fashion-MNIST's training images [60000, 1, 28, 28] uint8 and labels, and where from."""
    sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "src"))
    try:
        from kdlab.data import load_dataset

        splits = load_dataset("fashion-mnist", val_fraction=0.0)
        return splits.train.x.numpy(), splits.train.y.numpy(), str(FASHION)
    except Exception as err:  # not installed: the same shapes, random pixels
        rng = np.random.default_rng(0)
        x = rng.integers(0, 256, size=(60_000, 1, 28, 28), dtype=np.uint8)
        return x, rng.integers(0, 10, size=60_000), f"random images ({type(err).__name__})"


def worker(path: str, labels: str, mode: str, epochs: int) -> dict:
    """One measurement, in its own process: seconds per epoch and peak RSS."""
    import torch

    from kdlab.data.augment import parse_augment
    from kdlab.data.base import ArrayDataset
    from kdlab.data.stream import MappedDataset
    from kdlab.engine import Engine
    from kdlab.losses import build_objective
    from kdlab.models import build_model
    from kdlab.schemes.offline import OfflineScheme
    from kdlab.settings import TrainSettings

    torch.set_num_threads(1)
    y = torch.from_numpy(np.load(labels).astype(np.int64))
    augment, _ = parse_augment([{"random_crop": {"padding": 2}}, "hflip"])
    if mode == "memory":
        data = ArrayDataset(torch.from_numpy(np.load(path)), y, augment)
    else:
        data = MappedDataset(Path(path), np.arange(len(y)), y, augment)
    model = build_model({"type": "mlp", "hidden": [256]}, (1, 28, 28), 10, seed=0)
    marks: list[float] = []
    settings = TrainSettings(epochs=1 + epochs, batch_size=128, device="cpu", threads=1,
                             optimizer={"name": "sgd", "lr": 0.05})  # fmt: skip
    engine = Engine(
        settings, progress=False, callbacks=[lambda _: marks.append(time.perf_counter())]
    )
    engine.fit(OfflineScheme(model, build_objective([{"type": "ce"}])), data)
    times = [b - a for a, b in itertools.pairwise(marks)]
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024  # KiB → MiB on Linux
    median = statistics.median(times)
    return {"seconds_per_epoch": median, "epoch_seconds": times,
            "images_per_second": len(y) / median, "peak_rss_mib": peak}  # fmt: skip


def measure(folder: Path, factor: int, mode: str, epochs: int) -> dict:
    args = [str(folder / f"x{factor}.npy"), str(folder / f"y{factor}.npy"), mode, str(epochs)]
    code = (
        "import json, sys; sys.path.insert(0, sys.argv[1]); import bench_data; "
        "print(json.dumps(bench_data.worker(*sys.argv[2:5], int(sys.argv[5]))))"
    )
    here = str(Path(__file__).resolve().parent)
    done = subprocess.run([sys.executable, "-c", code, here, *args], capture_output=True,
                          text=True, check=True)  # fmt: skip
    return json.loads(done.stdout.strip().splitlines()[-1])


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--sizes", default="1,2,4", help="replication factors (default 1,2,4)")
    parser.add_argument("--epochs", type=int, default=2, help="timed epochs (default 2)")
    parser.add_argument("--json", dest="json_path", default=None)
    a = parser.parse_args()
    factors = [int(f) for f in a.sizes.split(",")]
    x, y, origin = fashion_train()
    rows: list[dict] = []
    with tempfile.TemporaryDirectory(prefix="kdlab-bench-data-") as tmp:
        folder = Path(tmp)
        for f in factors:
            np.save(folder / f"x{f}.npy", np.concatenate([x] * f))
            np.save(folder / f"y{f}.npy", np.concatenate([y] * f))
        for f in factors:
            for mode in ("memory", "stream"):
                print(f"running ×{f} {mode} …", file=sys.stderr, flush=True)
                rows.append({"factor": f, "images": len(y) * f, "mode": mode,
                             **measure(folder, f, mode, a.epochs)})  # fmt: skip
    ratios = {}
    for f in factors:
        memory, stream = (next(r for r in rows if r["factor"] == f and r["mode"] == m)
                          for m in ("memory", "stream"))  # fmt: skip
        ratios[f"stream_over_memory_x{f}"] = (
            stream["images_per_second"] / memory["images_per_second"]
        )
    result = {"benchmark": "bench_data", "data": origin, "rows": rows, "ratios": ratios}
    print(json.dumps(result, indent=2))
    if a.json_path:
        Path(a.json_path).write_text(json.dumps(result, indent=2))
    print(f"\n{origin}; 784-256-10 MLP, batch 128, crop+flip, 1 thread; median of {a.epochs}")
    print(f"{'size':>6} {'path':<8} {'images':>8} {'s/epoch':>9} {'images/s':>10} {'peak MiB':>9}")
    for r in rows:
        print(f"{'×' + str(r['factor']):>6} {r['mode']:<8} {r['images']:>8} "
              f"{r['seconds_per_epoch']:>9.2f} {r['images_per_second']:>10.0f} "
              f"{r['peak_rss_mib']:>9.0f}")  # fmt: skip
    for key, value in ratios.items():
        print(f"  {key:<28}{value:>7.3f}")


if __name__ == "__main__":
    main()
