"""Checkpoint and weights files are read without running code from them (kdlab.checkpoint).

A pickle whose loading would run code — as a training checkpoint, a weights file or a teacher's
checkpoint — is refused with a kdlab error and its payload never runs; a whole pickled
``nn.Module`` is refused with advice to save a state_dict; ``.safetensors`` files load; a run's
weights are exported as ``model.pt`` and ``model.safetensors``; damaged files and failed writes
(full disk, file-size limit) give clear errors and keep the previous checkpoint.
"""

from __future__ import annotations

import errno
import hashlib
import os
import random
import subprocess
import sys
import textwrap
from pathlib import Path

import numpy as np
import pytest
import torch
from safetensors import safe_open
from safetensors.torch import save_file
from torch import nn

from kdlab import checkpoint as ckpt
from kdlab import seeding
from kdlab.config import parse_config
from kdlab.data.base import ArrayDataset
from kdlab.engine import Engine
from kdlab.errors import KdlabError
from kdlab.experiment import run_experiment
from kdlab.losses import CrossEntropy, Objective
from kdlab.models import MLP
from kdlab.schemes.offline import OfflineScheme
from kdlab.settings import TrainSettings


class Payload:
    """Unpickling this runs ``os.system("touch <marker>")``: the file appears iff code ran."""

    def __init__(self, marker: Path) -> None:
        self.marker = marker

    def __reduce__(self):
        return os.system, (f"touch '{self.marker}'",)


class ExecPayload(Payload):
    """The same through ``exec`` of Python source."""

    def __reduce__(self):
        return exec, (f"open({str(self.marker)!r}, 'w').close()",)


def blobs(n: int = 64, seed: int = 0) -> ArrayDataset:
    g = torch.Generator().manual_seed(seed)
    y = torch.randint(0, 3, (n,), generator=g)
    return ArrayDataset(torch.randn(n, 8, generator=g) + y[:, None].float(), y)


def mlp(seed: int = 1) -> nn.Module:
    torch.manual_seed(seed)
    return nn.Sequential(nn.Linear(8, 16), nn.ReLU(), nn.Linear(16, 3))


def settings(epochs: int = 2) -> TrainSettings:
    return TrainSettings(epochs=epochs, batch_size=16, threads=1, checkpoint_seconds=0)


def fit(path: Path, epochs: int = 2, resume: bool = False, model: nn.Module | None = None):
    scheme = OfflineScheme(model if model is not None else mlp(), Objective([CrossEntropy()]))
    return Engine(settings(epochs), checkpoint_path=path, progress=False).fit(
        scheme, blobs(), blobs(32, 1), resume=resume
    )


def experiment(teacher: dict) -> dict:
    train = {"epochs": 1, "batch_size": 128, "threads": 1, "checkpoint_seconds": 0}
    return {
        "name": "t",
        "teacher": {"model": {"type": "mlp", "hidden": [16]}, **teacher},
        "student": {"model": {"type": "mlp", "hidden": [8]}, "train": train, "baseline": False},
    }


def digits_teacher_state(seed: int = 0) -> dict[str, torch.Tensor]:
    torch.manual_seed(seed)
    return MLP(64, [16], num_classes=10).state_dict()


# -- the payload never runs ------------------------------------------------------------------------


@pytest.mark.parametrize("payload", [Payload, ExecPayload])
def test_the_payload_runs_under_an_unsafe_load(tmp_path: Path, payload: type) -> None:
    """Control: the malicious files of these tests do run code when loaded the old way."""
    marker = tmp_path / "pwned"
    torch.save({"w": payload(marker)}, tmp_path / "evil.pt")
    torch.load(tmp_path / "evil.pt", weights_only=False)
    assert marker.exists()


@pytest.mark.parametrize("payload", [Payload, ExecPayload])
def test_load_checkpoint_refuses_a_malicious_pickle(tmp_path: Path, payload: type) -> None:
    marker, path = tmp_path / "pwned", tmp_path / "evil.pt"
    torch.save({"format": ckpt.FORMAT, "models": {"model": {"w": payload(marker)}}}, path)
    with pytest.raises(KdlabError) as info:
        ckpt.load_checkpoint(path)
    assert not marker.exists()
    msg = str(info.value)
    assert str(path) in msg and "running code from the file" in msg
    assert ("posix.system" in msg or "nt.system" in msg) if payload is Payload else "exec" in msg


def test_load_state_dict_refuses_a_malicious_pickle(tmp_path: Path) -> None:
    marker, path = tmp_path / "pwned", tmp_path / "weights.pt"
    torch.save({"weight": torch.ones(2), "bias": Payload(marker)}, path)
    with pytest.raises(KdlabError, match="refuses to load weights file"):
        ckpt.load_state_dict(path)
    assert not marker.exists()


def test_a_plain_pickle_file_is_refused_too(tmp_path: Path) -> None:
    import pickle

    marker, path = tmp_path / "pwned", tmp_path / "weights.pkl"
    path.write_bytes(pickle.dumps(Payload(marker), protocol=2))  # not torch's zip format
    with pytest.raises(KdlabError, match="running code from the file"):
        ckpt.load_state_dict(path)
    assert not marker.exists()


def test_engine_resume_refuses_a_malicious_checkpoint(tmp_path: Path) -> None:
    marker, path = tmp_path / "pwned", tmp_path / "ckpt.pt"
    fit(path, epochs=1)
    state = torch.load(path, weights_only=True)
    torch.save({**state, "rng": Payload(marker)}, path)  # a real checkpoint, one bad entry
    with pytest.raises(KdlabError, match=r"refuses to load checkpoint .*ckpt\.pt"):
        fit(path, epochs=2, resume=True)
    assert not marker.exists()


def test_teacher_checkpoint_refuses_a_malicious_pickle(tmp_path: Path) -> None:
    marker, path = tmp_path / "pwned", tmp_path / "teacher.pt"
    state = dict(digits_teacher_state())
    state["head.bias"] = Payload(marker)
    torch.save(state, path)
    with pytest.raises(KdlabError, match=r"teacher\.pt: it holds pickled Python objects"):
        run_experiment(parse_config(experiment({"checkpoint": str(path)})), progress=False)
    assert not marker.exists()


def test_teacher_checkpoints_refuse_a_malicious_member(tmp_path: Path) -> None:
    marker, good, bad = tmp_path / "pwned", tmp_path / "m0.pt", tmp_path / "m1.pt"
    ckpt.save_atomic(
        {"format": ckpt.FORMAT, "version": ckpt.VERSION,
         "models": {"model": digits_teacher_state(0)}}, good,
    )  # fmt: skip
    torch.save(
        {"format": ckpt.FORMAT, "version": ckpt.VERSION, "models": {"model": Payload(marker)}},
        bad,
    )
    cfg = parse_config(experiment({"checkpoints": [str(good), str(bad)]}))
    with pytest.raises(KdlabError, match=r"m1\.pt"):
        run_experiment(cfg, progress=False)
    assert not marker.exists()


# -- pickled modules and safetensors -----------------------------------------------------------


@pytest.mark.parametrize("module", [lambda: MLP(64, [16], num_classes=10), mlp])
def test_a_pickled_module_is_refused_with_state_dict_advice(tmp_path: Path, module) -> None:
    path = tmp_path / "whole_model.pt"
    torch.save(module(), path)
    with pytest.raises(KdlabError) as info:
        ckpt.load_state_dict(path)
    msg = str(info.value)
    assert "a whole pickled model (nn.Module" in msg and str(path) in msg
    assert "torch.save(model.state_dict(), path)" in msg and ".safetensors" in msg


def test_a_pickled_module_as_teacher_checkpoint_is_refused(tmp_path: Path) -> None:
    torch.manual_seed(0)
    path = tmp_path / "teacher.pt"
    torch.save(MLP(64, [16], num_classes=10), path)
    with pytest.raises(KdlabError, match=r"whole pickled model .*model\.state_dict\(\)"):
        run_experiment(parse_config(experiment({"checkpoint": str(path)})), progress=False)


def test_safetensors_teacher_gives_the_same_logits_as_its_state_dict(tmp_path: Path) -> None:
    state = digits_teacher_state(3)
    save_file(state, str(tmp_path / "teacher.safetensors"))
    torch.save(state, tmp_path / "teacher.pt")
    logits = {}
    for name in ("teacher.safetensors", "teacher.pt"):
        cfg = parse_config(experiment({"checkpoint": str(tmp_path / name)}))
        teacher = run_experiment(cfg, progress=False).teachers[0]
        logits[name] = teacher.eval()(torch.linspace(-1, 1, 5 * 64).view(5, 64))
    reference = MLP(64, [16], num_classes=10)
    reference.load_state_dict(state)
    expected = reference.eval()(torch.linspace(-1, 1, 5 * 64).view(5, 64))
    assert torch.equal(logits["teacher.safetensors"], expected)
    assert torch.equal(logits["teacher.pt"], expected)
    assert not torch.equal(expected, MLP(64, [16], num_classes=10).eval()(torch.ones(5, 64)))


def test_damaged_safetensors_file_is_a_kdlab_error(tmp_path: Path) -> None:
    path = tmp_path / "w.safetensors"
    path.write_bytes(b"\x10\x00\x00\x00\x00\x00\x00\x00{not json")
    with pytest.raises(KdlabError, match=r"cannot read safetensors file .*w\.safetensors"):
        ckpt.load_state_dict(path)
    with pytest.raises(KdlabError, match="load_state_dict"):
        ckpt.load_checkpoint(path)


# -- exported weights --------------------------------------------------------------------------


def test_save_model_writes_both_files_with_equal_tensors(tmp_path: Path) -> None:
    model = mlp()
    model[2].weight = nn.Parameter(model[0].weight[:3].clone())
    model.register_buffer("tied", model[0].weight)  # shares memory with a parameter
    model.register_buffer("strided", torch.arange(12.0).view(3, 4).t())  # non-contiguous
    state = model.state_dict()
    files = ckpt.save_model(state, tmp_path / "run", epoch=7)
    assert files == {
        "model": tmp_path / "run" / "model.pt",
        "safetensors": tmp_path / "run" / "model.safetensors",
    }
    assert sorted(p.name for p in (tmp_path / "run").iterdir()) == [
        "model.pt",
        "model.safetensors",
    ]  # no temporary file left
    assert ckpt.load_checkpoint(files["model"])["epoch"] == 7
    for path in files.values():
        loaded = ckpt.load_state_dict(path)
        assert loaded.keys() == state.keys()
        assert all(torch.equal(loaded[k], state[k]) for k in state)
    with safe_open(str(files["safetensors"]), "pt") as f:
        assert f.metadata()["epoch"] == "7"


def test_sha256_matches_hashlib(tmp_path: Path) -> None:
    files = ckpt.save_model({"w": torch.randn(600, 600)}, tmp_path)  # > 1 MiB: several chunks
    for path in files.values():
        assert ckpt.sha256(path) == hashlib.sha256(path.read_bytes()).hexdigest()
    assert ckpt.sha256(files["model"]) != ckpt.sha256(files["safetensors"])


def test_save_model_rejects_non_tensor_entries(tmp_path: Path) -> None:
    with pytest.raises(KdlabError, match=r"entry 'extra' is a str"):
        ckpt.save_model({"w": torch.ones(2), "extra": "x"}, tmp_path)
    assert not list(tmp_path.iterdir())


# -- the engine's checkpoint loads with weights_only -------------------------------------------


def test_engine_checkpoint_loads_with_weights_only_and_resumes_exactly(tmp_path: Path) -> None:
    straight = mlp()
    h_straight = fit(tmp_path / "a.pt", epochs=3, model=straight)
    state = torch.load(tmp_path / "a.pt", weights_only=True)  # no extra safe globals needed
    name, key, *_ = state["rng"]["numpy"]
    assert name == "MT19937" and isinstance(key, torch.Tensor) and key.shape == (624,)

    fit(tmp_path / "b.pt", epochs=1)  # an interrupted run: its checkpoint holds epoch 1
    resumed = mlp(seed=5)
    h_resumed = fit(tmp_path / "b.pt", epochs=3, resume=True, model=resumed)
    assert [r["loss"] for r in h_resumed] == [r["loss"] for r in h_straight]
    assert all(
        torch.equal(a, b)
        for a, b in zip(resumed.state_dict().values(), straight.state_dict().values(), strict=True)
    )


def test_rng_state_round_trip_restores_every_generator() -> None:
    np.random.seed(1)
    random.seed(2)
    torch.manual_seed(3)
    np.random.randn()  # a cached gaussian in numpy's state
    saved = seeding.rng_state()
    expected = (np.random.rand(3), random.random(), torch.rand(3))
    np.random.seed(9)
    random.seed(9)
    torch.manual_seed(9)
    seeding.set_rng_state(saved)
    assert np.array_equal(np.random.rand(3), expected[0])
    assert random.random() == expected[1]
    assert torch.equal(torch.rand(3), expected[2])


def test_old_checkpoint_with_numpy_state_says_start_again(tmp_path: Path) -> None:
    path = tmp_path / "ckpt.pt"
    fit(path, epochs=1)
    state = torch.load(path, weights_only=True)
    old_rng = {
        "torch": torch.get_rng_state(),
        "numpy": np.random.get_state(),
        "python": random.getstate(),
    }  # what kdlab saved before
    torch.save({**state, "rng": old_rng}, path)
    for load in (ckpt.load_checkpoint, lambda p: fit(p, epochs=2, resume=True)):
        with pytest.raises(KdlabError) as info:
            load(path)
        msg = str(info.value)
        assert "written by an older kdlab" in msg and "cannot be resumed safely" in msg
        assert "Start the run again" in msg and str(path) in msg
    with pytest.raises(KdlabError, match=r"older kdlab .*start the run again"):
        seeding.set_rng_state(old_rng)


# -- damaged checkpoints -----------------------------------------------------------------------


@pytest.mark.parametrize(
    ("content", "expected"),
    [
        ({"format": ckpt.FORMAT, "epoch": 1}, "has no 'models' entry"),
        ({"format": ckpt.FORMAT, "models": [1, 2]}, "'models' is a list, not a dict"),
        ({"format": ckpt.FORMAT, "models": {"model": [1]}}, r"models\['model'\] is a list"),
        ({"format": ckpt.FORMAT, "models": {"model": {"w": "x"}}}, "entry 'w' is a str"),
        ([torch.ones(1)], "no 'kdlab-checkpoint' marker, it holds a list"),
    ],
)
def test_damaged_checkpoint_structure_is_a_kdlab_error(tmp_path: Path, content, expected) -> None:
    path = tmp_path / "bad.pt"
    torch.save(content, path)
    for load in (ckpt.load_checkpoint, ckpt.load_state_dict):
        with pytest.raises(
            KdlabError, match=expected if load is ckpt.load_checkpoint else None
        ) as e:
            load(path)
        assert str(path) in str(e.value)


def test_plain_file_that_is_not_a_state_dict(tmp_path: Path) -> None:
    path = tmp_path / "t.pt"
    torch.save(torch.ones(3), path)
    with pytest.raises(
        KdlabError, match=r"neither a kdlab checkpoint nor a state_dict: it is a Te"
    ):
        ckpt.load_state_dict(path)


def test_resume_from_a_checkpoint_without_models_is_a_kdlab_error(tmp_path: Path) -> None:
    path = tmp_path / "ckpt.pt"
    fit(path, epochs=1)
    state = torch.load(path, weights_only=True)
    del state["models"]
    torch.save(state, path)
    with pytest.raises(KdlabError, match=r"ckpt\.pt has no 'models' entry"):
        fit(path, epochs=2, resume=True)


# -- failed writes -----------------------------------------------------------------------------


def _good_checkpoint(path: Path) -> bytes:
    ckpt.save_atomic({"format": ckpt.FORMAT, "models": {"model": {"w": torch.ones(3)}}}, path)
    return path.read_bytes()


def _failing_save(error: BaseException):
    def save(obj, handle, *args, **kwargs):
        handle.write(b"PARTIAL" * 100)
        raise error

    return save


def _torch_wrapped(errno_value: int) -> RuntimeError:
    try:
        raise OSError(errno_value, os.strerror(errno_value))
    except OSError:
        try:
            raise RuntimeError("[enforce fail at inline_container.cc:672] . unexpected pos 704")
        except RuntimeError as wrapped:  # __context__ is the OSError, as in torch.save
            return wrapped


@pytest.mark.parametrize(
    ("error", "expected"),
    [
        (OSError(errno.ENOSPC, "No space left on device"), "no space left on the device"),
        (OSError(errno.EFBIG, "File too large"), r"file too large \(a file-size limit\)"),
        (_torch_wrapped(errno.ENOSPC), "no space left on the device"),
        (_torch_wrapped(errno.EFBIG), r"file too large \(a file-size limit\)"),
    ],
)
def test_write_failure_keeps_previous_checkpoint(
    tmp_path: Path, monkeypatch, error, expected
) -> None:
    target = tmp_path / "ckpt.pt"
    before = _good_checkpoint(target)
    monkeypatch.setattr(torch, "save", _failing_save(error))
    with pytest.raises(KdlabError, match=expected) as info:
        ckpt.save_atomic({"format": ckpt.FORMAT, "models": {"model": {}}}, target)
    monkeypatch.undo()
    assert f"the previous file at {target} is intact" in str(info.value)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["ckpt.pt"]  # temp file removed
    assert target.read_bytes() == before


def test_write_failure_of_safetensors_export(tmp_path: Path, monkeypatch) -> None:
    real_fdopen = os.fdopen
    opened: list[int] = []

    class Full:
        """The second file opened (model.safetensors, after model.pt) hits a full disk."""

        def __init__(self, handle):
            self.handle, self.full = handle, len(opened) == 2

        def __enter__(self):
            return self

        def __exit__(self, *exc):
            self.handle.close()

        def write(self, data):
            if self.full:
                raise OSError(errno.ENOSPC, "No space left on device")
            return self.handle.write(data)

        def __getattr__(self, name):
            return getattr(self.handle, name)

    def fdopen(fd, mode):
        opened.append(fd)
        return Full(real_fdopen(fd, mode))

    monkeypatch.setattr(os, "fdopen", fdopen)
    with pytest.raises(KdlabError, match=r"model\.safetensors: no space left on the device"):
        ckpt.save_model({"w": torch.ones(100)}, tmp_path)
    assert len(opened) == 2
    assert sorted(p.name for p in tmp_path.iterdir()) == ["model.pt"]


@pytest.mark.skipif(sys.platform == "win32", reason="RLIMIT_FSIZE is POSIX")
def test_file_size_limit_keeps_previous_checkpoint_for_real(tmp_path: Path) -> None:
    target = tmp_path / "ckpt.pt"
    before = _good_checkpoint(target)
    limit = 100_000
    assert len(before) < limit
    script = textwrap.dedent(
        f"""
        import resource, signal, sys
        import torch
        from kdlab import checkpoint as ckpt
        from kdlab.errors import KdlabError
        signal.signal(signal.SIGXFSZ, signal.SIG_IGN)
        resource.setrlimit(resource.RLIMIT_FSIZE, ({limit}, {limit}))
        big = {{"format": ckpt.FORMAT, "models": {{"model": {{"w": torch.zeros(100_000)}}}}}}
        try:
            ckpt.save_atomic(big, sys.argv[1])
        except KdlabError as err:
            print(err)
            sys.exit(3)
        sys.exit(0)
        """
    )
    done = subprocess.run(
        [sys.executable, "-c", script, str(target)], capture_output=True, text=True, timeout=120
    )
    assert done.returncode == 3, done.stdout + done.stderr
    assert "file too large (a file-size limit)" in done.stdout
    assert f"the previous file at {target} is intact" in done.stdout
    assert target.read_bytes() == before
    assert torch.equal(ckpt.load_state_dict(target)["w"], torch.ones(3))
    assert sorted(p.name for p in tmp_path.iterdir()) == ["ckpt.pt"]
