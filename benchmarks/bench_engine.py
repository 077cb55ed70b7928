"""Engine overhead benchmark: kdlab's offline-KD epoch vs a hand-written PyTorch loop.

    python benchmarks/bench_engine.py           # Fashion-MNIST, 784-1200-1200-10 → 784-800-800-10
    python benchmarks/bench_engine.py --quick   # 10k training images, for a fast look

Measures, in one process and interleaved (this machine is shared and noisy, so only ratios
measured in the same run are meaningful):
  (a) a kdlab offline-KD epoch (Engine + OfflineScheme + hinton_loss) against a hand-written loop
      with the same models, data, batching and loss — the ratio is kdlab's overhead;
  (b) a kdlab student-alone epoch against the KD epoch — the price of the teacher's forward pass;
  (c) a KD epoch after the first with the teacher-logit cache (kdlab's default), which removes
      that price when inputs are not augmented.
Prints a JSON document and a table. Falls back to digits when Fashion-MNIST is not installed.
"""

from __future__ import annotations

import argparse
import json
import statistics
import time

import torch
import torch.nn.functional as F

from kdlab.data import load_dataset
from kdlab.data.base import ArrayDataset
from kdlab.engine import Engine
from kdlab.errors import DataError
from kdlab.losses import CrossEntropy, Objective, hinton_loss
from kdlab.models import MLP
from kdlab.schemes.offline import OfflineScheme
from kdlab.settings import OptimizerSettings, TrainSettings

T, BETA = 4.0, 0.9


def handwritten_epoch(student, teacher, data: ArrayDataset, batch_size: int, opt, seed: int):
    """The loop a careful user would write by hand: permutation batches, no_grad teacher."""
    student.train()
    teacher.eval()
    order = torch.randperm(len(data), generator=torch.Generator().manual_seed(seed))
    for start in range(0, len(data), batch_size):
        idx = order[start : start + batch_size]
        x, y = data.x[idx], data.y[idx]
        with torch.no_grad():
            v = teacher(x)
        z = student(x)
        kd = F.kl_div(
            F.log_softmax(z / T, -1),
            F.log_softmax(v / T, -1),
            reduction="batchmean",
            log_target=True,
        )
        loss = (1 - BETA) * F.cross_entropy(z, y) + BETA * T * T * kd
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()


def timed(fn) -> float:
    start = time.perf_counter()
    fn()
    return time.perf_counter() - start


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--repeats", type=int, default=3, help="epochs timed per variant")
    parser.add_argument("--batch-size", type=int, default=128)
    parser.add_argument("--quick", action="store_true", help="10k training images only")
    parser.add_argument("--json", dest="json_path", help="also write the JSON here")
    args = parser.parse_args()

    try:
        data = load_dataset("fashion-mnist", val_fraction=0.0)
    except DataError:
        data = load_dataset("digits", val_fraction=0.0)
    train = data.train
    if args.quick:
        train = train.subset(torch.arange(min(10_000, len(train))))
    d, c = data.in_features, data.num_classes
    torch.manual_seed(0)
    teacher = MLP(d, [1200, 1200], c, dropout=0.2).eval()
    names = ("kdlab_kd", "hand_kd", "kdlab_alone", "kdlab_kd_cached")
    students = {name: MLP(d, [800, 800], c) for name in names}
    for s in students.values():
        s.load_state_dict(students["kdlab_kd"].state_dict())

    settings = TrainSettings(
        epochs=1,
        batch_size=args.batch_size,
        optimizer=OptimizerSettings(name="sgd", lr=0.01, momentum=0.9),
    )
    kd = Objective(hinton_loss(T, BETA))
    schemes = {
        "kdlab_kd": OfflineScheme(students["kdlab_kd"], kd, teacher, cache_teacher=False),
        "kdlab_alone": OfflineScheme(students["kdlab_alone"], Objective([CrossEntropy()])),
        "kdlab_kd_cached": OfflineScheme(students["kdlab_kd_cached"], kd, teacher),
    }
    hand_opt = torch.optim.SGD(students["hand_kd"].parameters(), lr=0.01, momentum=0.9)
    times: dict[str, list[float]] = {k: [] for k in students}
    for rep in range(args.repeats + 1):  # the first round warms up allocators and caches
        for name in students:
            if name == "hand_kd":
                seconds = timed(
                    lambda r=rep: handwritten_epoch(
                        students["hand_kd"], teacher, train, args.batch_size, hand_opt, r
                    )
                )
            elif name == "kdlab_kd_cached":  # time the 2nd epoch: the 1st fills the cache
                two = settings.model_copy(update={"epochs": 2})
                history = Engine(two, seed=rep, progress=False).fit(schemes[name], train)
                seconds = history[1]["seconds"]
            else:
                engine = Engine(settings, seed=rep, progress=False)
                seconds = timed(lambda e=engine, n=name: e.fit(schemes[n], train))
            if rep:
                times[name].append(seconds)

    med = {k: statistics.median(v) for k, v in times.items()}
    result = {
        "dataset": data.name,
        "train_images": len(train),
        "batch_size": args.batch_size,
        "teacher": f"{d}-1200-1200-{c}",
        "student": f"{d}-800-800-{c}",
        "threads": torch.get_num_threads(),
        "epoch_seconds_median": med,
        "epoch_seconds_all": times,
        "ratio_kdlab_kd_over_handwritten_kd": med["kdlab_kd"] / med["hand_kd"],
        "ratio_kd_over_student_alone": med["kdlab_kd"] / med["kdlab_alone"],
        "ratio_cached_kd_over_student_alone": med["kdlab_kd_cached"] / med["kdlab_alone"],
        "kdlab_kd_images_per_second": len(train) / med["kdlab_kd"],
    }
    print(json.dumps(result, indent=2))
    if args.json_path:
        with open(args.json_path, "w") as handle:
            json.dump(result, handle, indent=2)
    print(
        f"\n{data.name}, {len(train)} images, batch {args.batch_size}, "
        f"{torch.get_num_threads()} threads, median of {args.repeats} epochs"
    )
    print(f"{'variant':<32}{'s/epoch':>10}{'images/s':>12}")
    labels = {
        "kdlab_kd": "kdlab offline KD (no cache)",
        "hand_kd": "hand-written KD loop",
        "kdlab_alone": "kdlab student alone (CE)",
        "kdlab_kd_cached": "kdlab offline KD, cached teacher",
    }
    for key, label in labels.items():
        print(f"{label:<32}{med[key]:>10.2f}{len(train) / med[key]:>12.0f}")
    ratio = result["ratio_kdlab_kd_over_handwritten_kd"]
    print(f"{'kdlab KD / hand-written KD':<32}{ratio:>10.3f}")
    print(f"{'KD / student alone':<32}{result['ratio_kd_over_student_alone']:>10.3f}")
    cached = result["ratio_cached_kd_over_student_alone"]
    print(f"{'cached KD / student alone':<32}{cached:>10.3f}")


if __name__ == "__main__":
    main()
