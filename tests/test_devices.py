"""Devices and precision (kdlab.devices and the engine): everything that runs on the CPU here.

The tests marked ``gpu`` run on a CUDA machine (benchmarks/device_check.sh); without one they
are skipped.
"""

from __future__ import annotations

import pytest
import torch

import kdlab
from kdlab import checkpoint as ckpt
from kdlab.data import load_dataset
from kdlab.devices import (
    autocast,
    available_devices,
    check_precision,
    module_device,
    resolve_device,
)
from kdlab.errors import ConfigError
from kdlab.losses import CrossEntropy, SoftTarget
from kdlab.models import MLP, build_model
from kdlab.settings import TrainSettings
from kdlab.types import Batch, ModelOutput

gpu = pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU")


@pytest.fixture(scope="module")
def digits():
    return load_dataset("digits", seed=0, test_size=300)


def settings(**changes) -> TrainSettings:
    base = {"epochs": 8, "batch_size": 64, "threads": 1, "optimizer": {"lr": 3e-3}}
    return TrainSettings(**{**base, **changes})


def test_device_names_resolve_or_name_what_is_available() -> None:
    assert resolve_device("cpu") == torch.device("cpu")
    expected = "cuda" if torch.cuda.is_available() else "mps" if "mps" in available_devices() \
        else "cpu"  # fmt: skip
    assert resolve_device("auto").type == expected
    if not torch.cuda.is_available():
        with pytest.raises(ConfigError, match=r"device 'cuda:1' is not available.*available: cpu"):
            resolve_device("cuda:1")
    with pytest.raises(ConfigError, match=r"device must be auto, cpu, cuda, cuda:N or mps"):
        resolve_device("gpu")
    with pytest.raises(ValueError, match=r"device must be auto, cpu, cuda, cuda:N or mps"):
        TrainSettings(device="gpu0")
    with pytest.raises(ConfigError, match=r"fp16 trains on CUDA only.*bf16"):
        check_precision(torch.device("cpu"), "fp16")


def test_explicit_cpu_and_auto_give_the_same_run(digits) -> None:
    runs = []
    for device in ("cpu", "auto"):
        torch.manual_seed(0)
        run = kdlab.train(MLP(64, [32], 10), digits, settings=settings(device=device),
                          progress=False)  # fmt: skip
        assert module_device(run.model) == resolve_device(device)
        runs.append(run)
    if resolve_device("auto").type == "cpu":
        assert runs[0].metrics == runs[1].metrics


def test_bf16_on_cpu_trains_within_a_point_of_fp32_and_losses_stay_fp32(digits) -> None:
    accuracy = {}
    for precision in ("fp32", "bf16"):
        torch.manual_seed(0)
        teacher = MLP(64, [128], 10)
        run = kdlab.train(teacher, digits, settings=settings(precision=precision), progress=False)
        accuracy[precision] = run.metrics["accuracy"]
    assert abs(accuracy["bf16"] - accuracy["fp32"]) <= 0.01
    student, terms = MLP(64, [16], 10), [CrossEntropy(), SoftTarget(temperature=4.0)]
    batch = Batch(digits.train.x[:32], digits.train.y[:32])
    with autocast(torch.device("cpu"), "bf16"):
        out = ModelOutput(student(batch.inputs))
        assert out.logits.dtype == torch.bfloat16  # the forward pass is in bf16 …
        values = [term(out, ModelOutput(teacher(batch.inputs)), batch) for term in terms]
    assert all(v.dtype == torch.float32 for v in values)  # … the losses are not


def test_checkpoints_hold_cpu_tensors_whatever_the_device() -> None:
    nested = {"a": [torch.ones(2), (torch.zeros(1), 3)], "b": {"c": torch.arange(3)}, "d": "x"}
    moved = ckpt.on_cpu(nested)
    assert moved["a"][1][1] == 3 and moved["d"] == "x" and isinstance(moved["a"][1], tuple)
    assert all(t.device.type == "cpu" for t in (moved["a"][0], moved["b"]["c"]))


def test_a_channels_last_conv_run_matches_the_default_layout(digits) -> None:
    results = []
    for channels_last in (False, True):
        model = build_model({"type": "cnn", "channels": [4, 8], "hidden": 16}, (1, 8, 8), 10,
                            seed=0)  # fmt: skip
        run = kdlab.train(model, digits, settings=settings(channels_last=channels_last, epochs=2),
                          progress=False)  # fmt: skip
        results.append(run.metrics["accuracy"])
    assert results[0] == pytest.approx(results[1], abs=0.02)


# -- on a GPU (benchmarks/device_check.sh) ----------------------------------------------------


@pytest.mark.gpu
@gpu
@pytest.mark.parametrize("precision", ["fp32", "bf16", "fp16"])
def test_gpu_training_in_each_precision(digits, precision: str, tmp_path) -> None:
    from kdlab.store import RunStore

    torch.manual_seed(0)
    teacher = kdlab.train(MLP(64, [128], 10), digits, settings=settings(device="cuda"),
                          progress=False).model  # fmt: skip
    assert module_device(teacher).type == "cuda"
    with RunStore(tmp_path) as store:
        run = kdlab.distill(teacher, MLP(64, [16], 10), digits, store=store, progress=False,
                            settings=settings(device="cuda", precision=precision))  # fmt: skip
        record = store.get_run(run.run_id)
    assert run.metrics["accuracy"] > 0.8
    state = torch.load(record.artefacts["checkpoint"], map_location="cpu", weights_only=True)
    assert all(t.device.type == "cpu" for t in state["models"]["model"].values())
    assert bool(state["scalers"]) == (precision == "fp16")
    cpu_copy = MLP(64, [16], 10)
    cpu_copy.load_state_dict(ckpt.load_state_dict(record.artefacts["model"]))  # saved on GPU
    torch.testing.assert_close(cpu_copy(digits.test.x), run.model(digits.test.x.cuda()).cpu())


def test_cli_device_and_precision_override_every_section(tmp_path) -> None:
    import yaml
    from typer.testing import CliRunner

    from kdlab import cli
    from kdlab.store import RunStore

    tiny = {"epochs": 1, "batch_size": 64, "threads": 1}
    path = tmp_path / "exp.yaml"
    path.write_text(yaml.safe_dump({
        "name": "dev", "data": {"source": "digits", "test_size": 100},
        "teacher": {"model": {"type": "mlp", "hidden": [16]}, "train": tiny},
        "student": {"model": {"type": "mlp", "hidden": [8]}, "train": tiny},
    }))  # fmt: skip
    store = tmp_path / "store"
    run = CliRunner().invoke(cli.app, ["run", str(path), "--store", str(store), "--no-progress",
                                       "--device", "cpu", "--precision", "bf16"])  # fmt: skip
    assert run.exit_code == 0, run.output
    with RunStore(store) as runs:
        recorded = [r.config["settings"] for r in runs.list_runs()]
    assert len(recorded) == 3
    assert all((s["device"], s["precision"]) == ("cpu", "bf16") for s in recorded)
    if not torch.cuda.is_available():  # refused before anything trains
        bad = CliRunner().invoke(cli.app, ["run", str(path), "--store", str(tmp_path / "other"),
                                           "--device", "cuda"])  # fmt: skip
        assert bad.exit_code == 2 and "not available on this machine" in bad.output
        with RunStore(tmp_path / "other") as runs:
            assert runs.list_runs() == []


class NaNFromStep(CrossEntropy):
    """Cross-entropy that turns NaN from the ``bad``-th call on (a run that diverges)."""

    kind = "nan_from_step_test"

    def __init__(self, bad: int) -> None:
        super().__init__()
        self.bad, self.calls = bad, 0

    def forward(self, student, teacher, batch):
        self.calls += 1
        value = super().forward(student, teacher, batch)
        return value * float("nan") if self.calls >= self.bad else value


@pytest.mark.parametrize("every", [1, 5])
def test_the_guard_names_the_first_bad_step_when_it_checks_in_windows(digits, every: int) -> None:
    """Checking every 5 steps (as on a GPU) finds the NaN of step 3 at step 5, but reports step
    3 and its terms, and the run stops (the last good checkpoint would be restored)."""
    with pytest.raises(kdlab.NonFiniteLossError) as info:
        kdlab.train(MLP(64, [8], 10), digits, loss=[NaNFromStep(bad=3)], progress=False,
                    settings=settings(epochs=1, finite_check_every=every))  # fmt: skip
    message = str(info.value)
    assert "non-finite loss at epoch 1, step 3 while training" in message
    assert "nan_from_step_test=nan" in message
