"""Many processes (DDP over Gloo on the CPU): the same numbers and the same store as one process.

The spawned tests start real ranks — through ``kdlab run --nproc 2`` (torchrun's launcher) and
through ``torch.multiprocessing`` for the Python API — and compare with one process: final
weights to 1e-5, the run store's rows exactly. The global batch splits evenly over the ranks
(it must, or kdlab refuses), so the averaged gradient is the one-process one.
"""

from __future__ import annotations

import json
import os
import socket
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file

import ddp_helpers
from kdlab import distributed
from kdlab.data.base import ArrayDataset, TensorBatcher
from kdlab.distributed import World
from kdlab.errors import ConfigError
from kdlab.launch import check_launch, first_error
from kdlab.settings import TrainSettings
from kdlab.store import RunStore
from kdlab.store.shared import WRITES, shared_store

TESTS = Path(__file__).parent

EXPERIMENT = """
name: ddp_check
seeds: [0]
data: {{source: digits, val_fraction: 0.11}}   # 1154 training examples: even, as 2 ranks need
teacher:
  model: {{type: mlp, hidden: [64]}}
  train: {{epochs: 3, batch_size: 32, optimizer: {{name: sgd, lr: 0.1}}, device: cpu,
          checkpoint_seconds: 0}}
student:
  model: {teacher_model}
  train: {{epochs: 3, batch_size: 32, optimizer: {{name: sgd, lr: 0.1}}, device: cpu,
          checkpoint_seconds: 0}}
distill:
  loss:
    - {{type: ce, weight: 0.1}}
    - {{type: soft_target, weight: 0.9, temperature: 4.0, name: kd}}
"""


# -- sharding and checks (one process) ---------------------------------------------------------


def test_each_rank_gets_an_equal_disjoint_slice_of_every_global_batch() -> None:
    data = ArrayDataset(torch.arange(22).float().unsqueeze(1), torch.zeros(22, dtype=torch.long))
    one = [b.index.tolist() for b in TensorBatcher(data, 8, seed=3).epoch(1)]
    ranks = [TensorBatcher(data, 8, seed=3, world=World(r, 2, r)) for r in range(2)]
    shards = [[b.index.tolist() for b in r.epoch(1)] for r in ranks]
    assert len(ranks[0]) == len(ranks[1]) == len(one) == 3
    for step, batch in enumerate(one):
        a, b = shards[0][step], shards[1][step]
        assert len(a) == len(b) and not set(a) & set(b)
        assert a + b == batch  # together, in order, the one-process batch
    # 22 = 2·8 + 6: the short batch splits 3 + 3. With 3 ranks it loses 6 % 3 = 0 examples; a
    # batch shorter than the world is dropped rather than leaving a rank without examples.
    three = [TensorBatcher(data, 9, seed=3, world=World(r, 3, r)) for r in range(3)]
    assert [len(t) for t in three] == [3, 3, 3]  # 22 = 2·9 + 4: the last gives each rank one
    tiny = ArrayDataset(torch.zeros(9, 1), torch.zeros(9, dtype=torch.long))
    assert len(TensorBatcher(tiny, 4, world=World(0, 2, 0))) == 2  # 9 = 2·4 + 1: the 1 is dropped


def test_shard_keeps_whole_ranks_equal_and_one_process_unchanged() -> None:
    index = torch.arange(7)
    assert distributed.shard(index, World(0, 1, 0)) is index
    parts = [distributed.shard(index, World(r, 3, r)).tolist() for r in range(3)]
    assert parts == [[0, 1], [2, 3], [4, 5]]


def test_a_batch_that_does_not_split_is_one_line_naming_the_fix() -> None:
    with pytest.raises(ConfigError, match=r"batch_size is 30.*multiple of 4, e\.g\. 28"):
        distributed.check_batch_size(30, World(0, 4, 0), "train.batch_size")
    distributed.check_batch_size(30, World(0, 1, 0))  # one process: any size


def test_launch_checks_refuse_what_n_processes_cannot_run() -> None:
    cpu = [("student.train", TrainSettings(device="cpu", batch_size=64))]
    with pytest.raises(ConfigError, match=r"--nproc must be ≥ 1"):
        check_launch(0, cpu)
    with pytest.raises(ConfigError, match=r"more processes than this machine's \d+ CPU cores"):
        check_launch((os.cpu_count() or 1) + 1, cpu)
    with pytest.raises(ConfigError, match=r"student.train.batch_size is 64.*multiple of 3"):
        check_launch(3, cpu) if (os.cpu_count() or 1) >= 3 else distributed.check_batch_size(
            64, World(0, 3, 0), "student.train.batch_size"
        )
    if not torch.cuda.is_available():
        gpu = [("teacher.train", TrainSettings(device="cuda", batch_size=64))]
        with pytest.raises(ConfigError, match=r"device 'cuda' is not available"):
            check_launch(2, gpu)
    check_launch(2, cpu)  # fits


def test_torchrun_variables_that_are_not_integers_are_a_clear_error(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setenv("WORLD_SIZE", "two")
    with pytest.raises(ConfigError, match=r"WORLD_SIZE='two' is not an integer"):
        distributed.world()
    monkeypatch.setenv("WORLD_SIZE", "2")
    monkeypatch.setenv("RANK", "1")
    monkeypatch.delenv("MASTER_ADDR", raising=False)
    assert distributed.world() == World(1, 2, 0) and not distributed.is_main()
    with pytest.raises(ConfigError, match=r"MASTER_ADDR.*is not set; launch through"):
        distributed.ensure_process_group()


def test_one_process_keeps_the_plain_store_and_writes_are_listed(tmp_path: Path) -> None:
    with RunStore(tmp_path) as store:
        assert shared_store(store) is store
        assert shared_store(None) is None
    public = {n for n in dir(RunStore) if not n.startswith("_") and callable(getattr(RunStore, n))}
    assert public >= WRITES  # a renamed write would silently become a collective read
    assert {"create_run", "get_run", "list_runs", "run_dir"} <= public - WRITES


def test_the_launcher_reports_the_rank_that_failed_first(tmp_path: Path) -> None:
    (tmp_path / "rank1.txt").write_text("error: rank 1: the cause\n")
    os.utime(tmp_path / "rank1.txt", ns=(1, 1))
    (tmp_path / "rank0.txt").write_text("error: rank 0: RuntimeError: peer closed\n")
    assert first_error(tmp_path, 0, 1) == "error: rank 1: the cause"
    empty = tmp_path / "none"
    empty.mkdir()
    assert "rank 3 ended with exit status 9" in first_error(empty, 3, 9)


# -- real ranks ---------------------------------------------------------------------------------


def _kdlab(*args: object, cwd: Path, timeout: float = 240) -> subprocess.CompletedProcess:
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(TESTS), os.environ.get(
        "PYTHONPATH", "")]), "OMP_NUM_THREADS": "1"}  # fmt: skip
    for key in ("RANK", "WORLD_SIZE", "LOCAL_RANK", "MASTER_ADDR", "MASTER_PORT"):
        env.pop(key, None)
    code = "import sys; from kdlab.cli import app; sys.argv[0] = 'kdlab'; app()"
    return subprocess.run(
        [sys.executable, "-c", code, *map(str, args)], cwd=cwd, env=env, capture_output=True,
        text=True, timeout=timeout,
    )  # fmt: skip


def _rows(store: Path) -> list[tuple]:
    with RunStore(store) as s:
        return sorted(
            (r.role, r.name, r.seed, r.status, tuple(sorted(r.metrics)), len(s.history(r.id)))
            for r in s.list_runs()
        )


def _weights(store: Path) -> dict[str, dict[str, torch.Tensor]]:
    with RunStore(store) as s:
        return {r.role: load_file(r.artefacts["safetensors"]) for r in s.list_runs()}


def test_kdlab_run_nproc_2_equals_one_process(tmp_path: Path) -> None:
    config = tmp_path / "exp.yaml"
    config.write_text(EXPERIMENT.format(teacher_model="{type: mlp, hidden: [16]}"))
    one = _kdlab("run", config, "--store", tmp_path / "one", "--no-progress", cwd=tmp_path)
    two = _kdlab("run", config, "--store", tmp_path / "two", "--no-progress", "--nproc", "2",
                 cwd=tmp_path)  # fmt: skip
    assert one.returncode == 0, one.stderr
    assert two.returncode == 0, two.stderr
    assert two.stdout.count("distilled") == 1  # rank 0 alone prints the table
    assert _rows(tmp_path / "one") == _rows(tmp_path / "two")  # the same runs, nothing more
    a, b = _weights(tmp_path / "one"), _weights(tmp_path / "two")
    assert set(a) == {"teacher", "student", "distilled"}
    for role in a:
        for key in a[role]:
            torch.testing.assert_close(b[role][key], a[role][key], atol=1e-5, rtol=0)
    with RunStore(tmp_path / "one") as s1, RunStore(tmp_path / "two") as s2:
        m1 = {r.role: r.metrics for r in s1.list_runs()}
        m2 = {r.role: r.metrics for r in s2.list_runs()}
    for role in m1:  # validation and test metrics reduced over the ranks: the same values
        for key in ("accuracy", "nll"):
            assert m2[role][key] == pytest.approx(m1[role][key], abs=1e-4)
    again = _kdlab("run", config, "--store", tmp_path / "two", "--no-progress", "--nproc", "2",
                   "--resume", cwd=tmp_path)  # fmt: skip
    assert again.returncode == 0, again.stderr
    assert "seeds 0 were complete" in again.stdout
    assert _rows(tmp_path / "two") == _rows(tmp_path / "one")  # resumed: nothing re-run


def test_a_rank_that_raises_ends_every_rank_with_its_error(tmp_path: Path) -> None:
    config = tmp_path / "exp.yaml"
    model = "{type: 'ddp_helpers:FailsOnRankOne'}"
    config.write_text(EXPERIMENT.format(teacher_model=model))
    done = _kdlab("run", config, "--store", tmp_path / "s", "--no-progress", "--nproc", "2",
                  cwd=tmp_path, timeout=180)  # fmt: skip
    assert done.returncode != 0
    assert "rank 1: RuntimeError: rank one broke on purpose" in done.stderr
    assert "Traceback" not in done.stderr
    with RunStore(tmp_path / "s") as store:
        runs = {r.role: r.status for r in store.list_runs()}
    assert runs["teacher"] == "finished"  # what finished before the failure is kept
    assert runs["student"] in ("failed", "interrupted")  # and nothing reads as running
    assert all(status != "running" for status in runs.values())


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def test_every_scheme_under_ddp_matches_one_process(tmp_path: Path) -> None:
    import torch.multiprocessing as mp

    (tmp_path / "shared").mkdir()
    (tmp_path / "alone").mkdir()
    sys.path.insert(0, str(TESTS))
    mp.spawn(ddp_helpers.rank_main, args=(2, _free_port(), str(tmp_path)), nprocs=2, join=True)
    ranks = [_flatten(torch.load(tmp_path / f"ddp{r}.pt", weights_only=True)) for r in (0, 1)]
    alone = _flatten(ddp_helpers.scheme_weights(tmp_path / "alone"))
    assert set(alone) == set(ranks[0]) == set(ranks[1]) and len(alone) > 20
    for key, value in alone.items():
        torch.testing.assert_close(ranks[1][key], ranks[0][key], atol=0, rtol=0, msg=key)
        if "wgan_gp" not in key:  # the penalty's random interpolations differ by batch size
            torch.testing.assert_close(ranks[0][key], value, atol=1e-5, rtol=0, msg=key)


def _flatten(tree: object, prefix: str = "") -> dict[str, torch.Tensor]:
    if isinstance(tree, torch.Tensor):
        return {prefix: tree}
    items = tree.items() if isinstance(tree, dict) else enumerate(tree)  # type: ignore[union-attr]
    out: dict[str, torch.Tensor] = {}
    for key, value in items:
        out.update(_flatten(value, f"{prefix}/{key}"))
    return out


def test_rank_zero_store_answers_every_rank_alike(tmp_path: Path) -> None:
    script = textwrap.dedent(f"""
        import os, json, torch.multiprocessing as mp
        from pathlib import Path

        def main(rank):
            os.environ.update(RANK=str(rank), WORLD_SIZE="2", LOCAL_RANK=str(rank),
                              MASTER_ADDR="127.0.0.1", MASTER_PORT="{_free_port()}")
            from kdlab.store import RunStore
            from kdlab.store.shared import shared_store
            root = Path(r"{tmp_path}")
            store = shared_store(RunStore(root / f"s{{rank}}"))
            run = store.create_run(experiment="e", name="n", role="r", seed=0, config={{}})
            store.log_epoch(run, 1, {{"loss": 1.0}})
            try:
                store.get_run("nope")
                raised = None
            except Exception as err:
                raised = type(err).__name__
            seen = {{"id": run, "history": len(store.history(run)), "raised": raised}}
            (root / f"rank{{rank}}.json").write_text(json.dumps(seen))

        if __name__ == "__main__":
            mp.spawn(main, nprocs=2)
    """)
    path = tmp_path / "store_script.py"
    path.write_text(script)
    done = subprocess.run([sys.executable, str(path)], capture_output=True, text=True, timeout=120)
    assert done.returncode == 0, done.stderr
    seen = [json.loads((tmp_path / f"rank{r}.json").read_text()) for r in (0, 1)]
    assert seen[0] == seen[1]  # rank 1 got rank 0's run id, history and error
    assert seen[0]["history"] == 1 and seen[0]["raised"] == "StoreError"
    with RunStore(tmp_path / "s1") as s1:
        assert s1.list_runs() == []  # rank 1 never wrote its own store


def test_preflight_refuses_a_batch_the_ranks_cannot_share(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    from kdlab.config import load_config
    from kdlab.preflight import preflight

    config = tmp_path / "exp.yaml"
    config.write_text(EXPERIMENT.format(teacher_model="{type: mlp, hidden: [16]}"))
    cfg = load_config(config)
    preflight(cfg)  # one process: fine
    monkeypatch.setenv("WORLD_SIZE", "3")  # as torchrun sets it: 32 does not split over 3
    with pytest.raises(ConfigError, match=r"^student\.train\.batch_size is 32.*multiple of 3"):
        preflight(cfg)


@pytest.mark.gpu
@pytest.mark.skipif(torch.cuda.device_count() < 2, reason="needs 2 CUDA GPUs (NCCL: one per rank)")
def test_nccl_on_two_gpus_equals_one_gpu(tmp_path: Path) -> None:
    config = tmp_path / "exp.yaml"
    config.write_text(EXPERIMENT.format(teacher_model="{type: mlp, hidden: [16]}"))
    one = _kdlab("run", config, "--store", tmp_path / "one", "--no-progress", "--device", "cuda",
                 cwd=tmp_path)  # fmt: skip
    two = _kdlab("run", config, "--store", tmp_path / "two", "--no-progress", "--device", "cuda",
                 "--nproc", "2", cwd=tmp_path)  # fmt: skip
    assert one.returncode == 0 and two.returncode == 0, one.stderr + two.stderr
    assert _rows(tmp_path / "one") == _rows(tmp_path / "two")
    a, b = _weights(tmp_path / "one"), _weights(tmp_path / "two")
    for role in a:
        for key in a[role]:  # GPU reductions may sum in another order: 1e-4
            torch.testing.assert_close(b[role][key], a[role][key], atol=1e-4, rtol=0)
