"""Device benchmark: kdlab's CIFAR offline-KD epoch on CPU / CUDA / MPS, by precision and option.

    python benchmarks/bench_device.py                         # auto device; 50k images on a GPU
    python benchmarks/bench_device.py --quick --device cpu    # 512 images, 1 timed epoch
    python benchmarks/bench_device.py --device cuda --json out.json --variants kd,hand,bf16

Workload: synthetic CIFAR-shaped data (N random 3×32×32 images in [0, 1], 100 classes, fixed
seed, nothing downloaded); a frozen resnet32x4 teacher (eval mode) distilled into a resnet8x4
student with ``[{type: ce, weight: 0.1}, {type: soft_target, weight: 0.9, temperature: 4}]``,
batch 128, SGD lr 0.05 momentum 0.9. Models are randomly initialised: only speed is measured.

Variants (``--variants``, comma-separated; each one trains fresh copies of the same initial
models: first ``--warmup`` untimed epochs over the first ``--warmup-images`` images (all by
default; one batch and the last partial batch's size with ``--quick``), then ``--epochs`` timed
epochs over all images):

  (a) ``kd``    kdlab Engine + OfflineScheme, fp32, teacher recomputed (``cache_teacher=False``)
      ``hand``  a hand-written loop with the same models, loss and data placement (the whole
                dataset on the device, a permutation per epoch, batches by indexing)
  (b) ``bf16`` / ``fp16`` (autocast; fp16 with a GradScaler, CUDA only, not run by default) /
      ``channels_last`` / ``compile`` (nn.Module.compile; run on CUDA only, unless named)
  (c) ``cached`` kdlab KD with the teacher-logit cache (its warm-up epochs run over all images
                 in the same fit: the first fills the cache), and
      ``alone``  the student alone (cross-entropy only)
  (d) ``ddp``   the KD epoch (teacher recomputed) on 1 vs 2 processes under DDP, each count in
                freshly spawned processes (benchmarks/bench_ddp.py): on the CPU they share the
                cores, on CUDA each rank takes a GPU (skipped with fewer than 2).

The whole data set is put on the device once, before the first variant (the engine leaves data
already there in place). An epoch's time runs from the end of the previous one (for the first
timed epoch: the start of the timed run, after the warm-up run) to the end of this one, both
marked after ``torch.cuda.synchronize()`` on CUDA, so compiling and warm-up stay out of it.
Reports the median seconds per epoch and images per second, and the throughput ratios
kdlab/hand-written, cached/student-alone, cached/recomputed and bf16, channels_last, compile
over fp32.

kdlab's ``TrainSettings`` fields ``device``, ``precision``, ``channels_last`` and ``compile`` are
used when this kdlab has them; without ``device`` everything runs on the CPU (kdlab's default)
and a note says so; a variant whose field is missing is skipped with a note.

Prints a JSON document, then a table; ``--json PATH`` also writes the JSON, rewritten after
every variant (``"complete": false`` until the end) so a run stopped by a time limit keeps what
it measured. ``--budget-s`` skips the variants not yet started once that many seconds passed.
"""

from __future__ import annotations

import argparse
import copy
import itertools
import json
import os
import platform
import statistics
import sys
import time
import traceback
from collections.abc import Callable
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

import kdlab
from kdlab.data.base import ArrayDataset
from kdlab.engine import Engine
from kdlab.losses import build_objective
from kdlab.models import build_model
from kdlab.schemes.offline import OfflineScheme
from kdlab.settings import OptimizerSettings, TrainSettings

NUM_CLASSES, SHAPE = 100, (3, 32, 32)
TEACHER, STUDENT = "resnet32x4", "resnet8x4"
CE_WEIGHT, KD_WEIGHT, T = 0.1, 0.9, 4.0
KD_LOSS = [
    {"type": "ce", "weight": CE_WEIGHT},
    {"type": "soft_target", "weight": KD_WEIGHT, "temperature": T},
]
LR, MOMENTUM = 0.05, 0.9

#: name: (label, kind, TrainSettings fields the variant sets, teacher-logit cache)
VARIANTS: dict[str, tuple[str, str, dict[str, Any], bool]] = {
    "kd": ("kdlab KD fp32, teacher recomputed", "kdlab", {}, False),
    "hand": ("hand-written KD loop fp32", "hand", {}, False),
    "bf16": ("kdlab KD bf16 autocast", "kdlab", {"precision": "bf16"}, False),
    "fp16": ("kdlab KD fp16 autocast + GradScaler", "kdlab", {"precision": "fp16"}, False),
    "channels_last": ("kdlab KD fp32 channels_last", "kdlab", {"channels_last": True}, False),
    "compile": ("kdlab KD fp32 compiled", "kdlab", {"compile": True}, False),
    "cached": ("kdlab KD fp32, cached teacher", "kdlab", {}, True),
    "alone": ("kdlab student alone (CE)", "alone", {}, False),
    "ddp": ("kdlab KD fp32 on 2 processes (DDP)", "ddp", {}, False),
}
#: compile last: its compilation is the slowest part, and --budget-s skips what is left
DEFAULT_VARIANTS = ["kd", "hand", "bf16", "channels_last", "cached", "alone", "compile", "ddp"]
NEW_FIELDS = ("device", "precision", "channels_last", "compile")


# -- device -------------------------------------------------------------------------------------


def resolve_device(requested: str) -> torch.device:
    if requested == "auto":
        if torch.cuda.is_available():
            return torch.device("cuda")
        mps = getattr(torch.backends, "mps", None)
        if mps is not None and mps.is_available():
            return torch.device("mps")
        return torch.device("cpu")
    device = torch.device(requested)
    if device.type == "cuda" and not torch.cuda.is_available():
        raise SystemExit(f"--device {requested}: CUDA is not available here")
    if device.type == "mps" and not torch.backends.mps.is_available():
        raise SystemExit(f"--device {requested}: MPS is not available here")
    return device


def synchronize(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)
    elif device.type == "mps":
        torch.mps.synchronize()


def device_name(device: torch.device) -> str:
    if device.type == "cuda":
        return torch.cuda.get_device_name(device)
    if device.type == "mps":
        return "Apple MPS"
    return platform.processor() or platform.machine()


# -- workload -----------------------------------------------------------------------------------


def synthetic_data(n: int, seed: int) -> ArrayDataset:
    gen = torch.Generator().manual_seed(seed)
    x = torch.rand(n, *SHAPE, generator=gen)
    y = torch.randint(0, NUM_CLASSES, (n,), generator=gen)
    return ArrayDataset(x, y)


def handwritten_fit(
    student: nn.Module,
    teacher: nn.Module,
    data: ArrayDataset,
    batch_size: int,
    epochs: int,
    seed: int,
    on_epoch: Callable[[], None],
) -> None:
    """What a careful user writes by hand: data on the device once, a permutation per epoch,
    batches by indexing, the teacher under no_grad in eval mode."""
    device = next(student.parameters()).device
    x, y = data.x.to(device), data.y.to(device)
    teacher.eval().requires_grad_(False)
    opt = torch.optim.SGD(student.parameters(), lr=LR, momentum=MOMENTUM)
    n = len(data)
    for epoch in range(epochs):
        student.train()
        gen = torch.Generator().manual_seed(seed * 1_000_003 + epoch)
        order = torch.randperm(n, generator=gen).to(device)
        for start in range(0, n, batch_size):
            idx = order[start : start + batch_size]
            xb, yb = x[idx], y[idx]
            with torch.no_grad():
                v = teacher(xb)
            z = student(xb)
            kd = F.kl_div(
                F.log_softmax(z / T, -1),
                F.log_softmax(v / T, -1),
                reduction="batchmean",
                log_target=True,
            )
            loss = CE_WEIGHT * F.cross_entropy(z, yb) + KD_WEIGHT * T * T * kd
            opt.zero_grad(set_to_none=True)
            loss.backward()
            opt.step()
        on_epoch()


def run_variant(
    name: str,
    base_teacher: nn.Module,
    base_student: nn.Module,
    data: ArrayDataset,
    device: torch.device,
    args: argparse.Namespace,
    fields: dict[str, bool],
) -> list[float]:
    """Seconds of each timed epoch of one variant (fresh copies of the initial models).

    The warm-up is a separate run over the first ``--warmup-images`` images with the same models
    (all images by default), except for ``cached``: its first epoch over all images fills the
    teacher-logit cache, and the timed epochs follow in the same run.
    """
    _, kind, extra, cache = VARIANTS[name]
    teacher, student = copy.deepcopy(base_teacher), copy.deepcopy(base_student)
    warm = data
    if args.warmup_images is not None and args.warmup_images < len(data):
        warm = ArrayDataset(data.x[: args.warmup_images], data.y[: args.warmup_images])
    marks: list[float] = []

    def mark(_row: Any = None) -> None:
        synchronize(device)
        marks.append(time.perf_counter())

    def noop(_row: Any = None) -> None:
        pass

    if kind == "hand":
        teacher.to(device)
        student.to(device)
        if args.warmup:
            handwritten_fit(student, teacher, warm, args.batch_size, args.warmup, args.seed, noop)
        mark()
        handwritten_fit(student, teacher, data, args.batch_size, args.epochs, args.seed, mark)
        return [b - a for a, b in itertools.pairwise(marks)]

    updates: dict[str, Any] = dict(extra)
    if fields["device"]:
        updates["device"] = str(device)
    else:  # this kdlab trains where the data and models are: the CPU
        student.to(device)
        teacher.to(device)

    def settings(epochs: int) -> TrainSettings:
        return TrainSettings(
            epochs=epochs,
            batch_size=args.batch_size,
            optimizer=OptimizerSettings(name="sgd", lr=LR, momentum=MOMENTUM),
            cache_teacher=cache,
            **updates,
        )

    if kind == "alone":
        scheme = OfflineScheme(student, build_objective([{"type": "ce"}]))
    else:
        scheme = OfflineScheme(student, build_objective(KD_LOSS), teacher, cache_teacher=cache)
    fill = args.warmup if cache else 0  # the cache is cleared at the start of every fit
    if args.warmup and not cache:
        Engine(settings(args.warmup), seed=args.seed, progress=False).fit(scheme, warm)
    mark()
    engine = Engine(settings(fill + args.epochs), seed=args.seed, progress=False, callbacks=[mark])
    engine.fit(scheme, data)
    return [b - a for a, b in itertools.pairwise(marks)][fill:]


def ddp_row(args: argparse.Namespace, device: torch.device) -> dict[str, Any]:
    from bench_ddp import compare  # beside this file

    job = {"device": device.type, "n_images": args.n_images, "batch_size": args.batch_size,
           "epochs": args.epochs, "warmup": max(1, args.warmup), "seed": args.seed}  # fmt: skip
    try:
        return compare(job)
    except Exception as err:  # a failed row must not lose the others
        traceback.print_exc()
        return {"status": "failed", "note": f"failed: {type(err).__name__}: {err}"[:300]}


def skip_reason(name: str, device: torch.device, fields: dict[str, bool]) -> str | None:
    extra = VARIANTS[name][2]
    missing = [key for key in extra if not fields[key]]
    if missing:
        return f"skipped: TrainSettings has no {', '.join(missing)} field in this kdlab"
    if name == "fp16" and device.type != "cuda":
        return "skipped: fp16 (GradScaler) is CUDA only"
    return None


# -- report -------------------------------------------------------------------------------------


def ratios(results: dict[str, dict[str, Any]]) -> dict[str, float | None]:
    def rate(key: str) -> float | None:
        return results.get(key, {}).get("images_per_second")

    def over(a: str, b: str) -> float | None:
        ra, rb = rate(a), rate(b)
        return ra / rb if ra and rb else None

    return {
        "kdlab_over_handwritten": over("kd", "hand"),
        "cached_over_student_alone": over("cached", "alone"),
        "cached_over_recomputed": over("cached", "kd"),
        "bf16_over_fp32": over("bf16", "kd"),
        "fp16_over_fp32": over("fp16", "kd"),
        "channels_last_over_fp32": over("channels_last", "kd"),
        "compile_over_fp32": over("compile", "kd"),
        "ddp_two_over_one_process": results.get("ddp", {}).get("two_over_one_process"),
    }


RATIO_LABELS = {
    "kdlab_over_handwritten": "kdlab KD / hand-written",
    "cached_over_student_alone": "cached KD / student alone",
    "cached_over_recomputed": "cached KD / recomputed KD",
    "bf16_over_fp32": "bf16 / fp32",
    "fp16_over_fp32": "fp16 / fp32",
    "channels_last_over_fp32": "channels_last / fp32",
    "compile_over_fp32": "compile / fp32",
    "ddp_two_over_one_process": "DDP 2 / 1 process",
}


def print_table(result: dict[str, Any]) -> None:
    print(
        f"\n{result['device']} ({result['device_name']}), torch {result['torch']}, "
        f"{result['n_images']} images, batch {result['batch_size']}, {TEACHER} → {STUDENT}, "
        f"median of {result['timed_epochs']} epoch(s) after {result['warmup_epochs']} warm-up "
        f"epoch(s) over {result['warmup_images']} images"
    )
    for note in result["notes"]:
        print(f"note: {note}")
    print(f"{'variant':<40}{'s/epoch':>10}{'images/s':>11}{'peak MiB':>10}  note")
    for row in result["variants"].values():
        if row["status"] == "ok":
            peak = row.get("peak_memory_mib")
            print(
                f"{row['label']:<40}{row['seconds_per_epoch']:>10.3f}"
                f"{row['images_per_second']:>11.0f}{'' if peak is None else f'{peak:.0f}':>10}"
            )
        else:
            print(f"{row['label']:<40}{'-':>10}{'-':>11}{'':>10}  {row['note']}")
    print("throughput ratios (images/s over images/s)")
    for key, label in RATIO_LABELS.items():
        value = result["ratios"].get(key)
        if value is not None:
            print(f"  {label:<38}{value:>10.3f}")


def write_json(result: dict[str, Any], path: str | None) -> None:
    if path:
        tmp = f"{path}.tmp"
        with open(tmp, "w") as handle:
            json.dump(result, handle, indent=2)
        os.replace(tmp, path)


# -- main ---------------------------------------------------------------------------------------


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--device", default="auto", help="auto | cpu | cuda | cuda:N | mps")
    parser.add_argument(
        "--n-images", type=int, help="training images (default 50000 on a GPU, 2048 on the CPU)"
    )
    parser.add_argument("--epochs", type=int, help="timed epochs per variant (default 3)")
    parser.add_argument("--warmup", type=int, default=1, help="untimed epochs first (default 1)")
    parser.add_argument(
        "--warmup-images",
        type=int,
        help="warm up on the first K images only (default: all; --quick: 1 batch + the last "
        "partial batch's size, so every batch shape is seen)",
    )
    parser.add_argument("--batch-size", type=int, default=128)
    parser.add_argument(
        "--variants",
        help=f"comma-separated subset of {', '.join(VARIANTS)} (default: "
        f"{','.join(DEFAULT_VARIANTS)}; compile only on CUDA unless named)",
    )
    parser.add_argument(
        "--quick", action="store_true", help="512 images and 1 timed epoch unless given"
    )
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument(
        "--budget-s", type=float, help="start no new variant after this many seconds"
    )
    parser.add_argument("--json", dest="json_path", help="also write the JSON here")
    args = parser.parse_args(argv)
    if args.variants:
        names = [v.strip() for v in args.variants.split(",") if v.strip()]
        unknown = [v for v in names if v not in VARIANTS]
        if unknown:
            parser.error(f"unknown variant(s) {unknown}; valid: {', '.join(VARIANTS)}")
        args.variant_list, args.named = names, True
    else:
        args.variant_list, args.named = list(DEFAULT_VARIANTS), False
    for key in ("n_images", "epochs", "batch_size", "warmup_images"):
        value = getattr(args, key)
        if value is not None and value < 1:
            parser.error(f"--{key.replace('_', '-')} must be ≥ 1, got {value}")
    if args.warmup < 0:
        parser.error(f"--warmup must be ≥ 0, got {args.warmup}")
    if args.warmup < 1 and "cached" in args.variant_list:
        parser.error("the cached variant needs --warmup ≥ 1 (the first epoch fills the cache)")
    return args


def main(argv: list[str] | None = None) -> None:
    args = parse_args(argv)
    started = time.perf_counter()
    notes: list[str] = []
    fields = {key: key in TrainSettings.model_fields for key in NEW_FIELDS}
    if fields["device"]:
        device = resolve_device(args.device)
    else:
        device = torch.device("cpu")
        notes.append(
            "this kdlab's TrainSettings has no 'device' field (the engine's device support is "
            "not in yet): kdlab and the hand-written loop run on the default device, the CPU"
            f"{'' if args.device in ('cpu', 'auto') else f', not {args.device}'}"
        )
    on_gpu = device.type in ("cuda", "mps")
    if args.n_images is None:
        args.n_images = 512 if args.quick else 50_000 if on_gpu else 2048
    if args.epochs is None:
        args.epochs = 1 if args.quick else 3
    if args.warmup_images is None and args.quick:
        args.warmup_images = args.batch_size + args.n_images % args.batch_size
    if device.type != "cuda" and "compile" in args.variant_list and not args.named:
        args.variant_list.remove("compile")
        notes.append(f"compile skipped on {device.type} (name it in --variants to run it)")
    for note in notes:
        print(f"note: {note}", file=sys.stderr)

    torch.manual_seed(args.seed)
    data = synthetic_data(args.n_images, args.seed)
    data = ArrayDataset(data.x.to(device), data.y.to(device))  # once; the engine keeps it there
    base_teacher = build_model({"type": TEACHER}, SHAPE, NUM_CLASSES, seed=args.seed).eval()
    base_student = build_model({"type": STUDENT}, SHAPE, NUM_CLASSES, seed=args.seed + 1)

    result: dict[str, Any] = {
        "benchmark": "bench_device",
        "complete": False,
        "device_requested": args.device,
        "device": str(device),
        "device_name": device_name(device),
        "torch": torch.__version__,
        "kdlab": getattr(kdlab, "__version__", "unknown"),
        "python": platform.python_version(),
        "settings_fields": fields,
        "threads": torch.get_num_threads(),
        "n_images": args.n_images,
        "num_classes": NUM_CLASSES,
        "batch_size": args.batch_size,
        "teacher": TEACHER,
        "student": STUDENT,
        "loss": KD_LOSS,
        "optimizer": {"name": "sgd", "lr": LR, "momentum": MOMENTUM},
        "warmup_epochs": args.warmup,
        "warmup_images": args.warmup_images or args.n_images,
        "timed_epochs": args.epochs,
        "notes": notes,
        "variants": {},
        "ratios": {},
    }
    if device.type == "cuda":
        result["cuda"] = {
            "capability": ".".join(map(str, torch.cuda.get_device_capability(device))),
            "cudnn": torch.backends.cudnn.version(),
            "cudnn_benchmark": torch.backends.cudnn.benchmark,
            "cudnn_allow_tf32": torch.backends.cudnn.allow_tf32,
            "matmul_allow_tf32": torch.backends.cuda.matmul.allow_tf32,
        }
    for name in args.variant_list:
        label = VARIANTS[name][0]
        row: dict[str, Any] = {"label": label}
        reason = skip_reason(name, device, fields)
        elapsed = time.perf_counter() - started
        if reason is None and args.budget_s is not None and elapsed > args.budget_s:
            reason = f"skipped: time budget of {args.budget_s:.0f} s spent"
        if reason is not None:
            row.update(status="skipped", note=reason)
        elif name == "ddp":
            print(f"running {name}: {label} …", file=sys.stderr, flush=True)
            row.update(ddp_row(args, device))
        else:
            print(f"running {name}: {label} …", file=sys.stderr, flush=True)
            if device.type == "cuda":
                torch.cuda.empty_cache()
                torch.cuda.reset_peak_memory_stats(device)
            try:
                times = run_variant(name, base_teacher, base_student, data, device, args, fields)
            except Exception as err:  # one variant's failure (e.g. compile) must not stop others
                traceback.print_exc()
                row.update(status="failed", note=f"failed: {type(err).__name__}: {err}"[:300])
            else:
                med = statistics.median(times)
                row.update(
                    status="ok",
                    seconds_per_epoch=med,
                    images_per_second=args.n_images / med,
                    epoch_seconds=times,
                )
                if device.type == "cuda":
                    row["peak_memory_mib"] = torch.cuda.max_memory_allocated(device) / 2**20
        result["variants"][name] = row
        result["ratios"] = ratios(result["variants"])
        write_json(result, args.json_path)
    result["complete"] = True
    result["total_seconds"] = time.perf_counter() - started
    write_json(result, args.json_path)
    print(json.dumps(result, indent=2))
    print_table(result)


if __name__ == "__main__":
    main()
