"""Distributed utilities with two real gloo processes on CPU."""
import json
import os

import pytest
import torch

from utils import distributed as du


def _worker(out_dir: str) -> None:
    du.init_from_env("gloo")
    rank = du.get_rank()
    total = du.all_reduce(torch.tensor([rank + 1.0]))
    mean = du.all_reduce(torch.tensor([rank + 1.0]), op="mean")
    objects = du.all_gather_object({"rank": rank, "name": f"worker{rank}"})
    tensors = du.all_gather_tensor(torch.full((2,), float(rank)))
    with open(os.path.join(out_dir, f"rank{rank}.json"), "w") as f:
        json.dump({"world": du.get_world_size(), "total": total.item(), "mean": mean.item(), "objects": objects,
                   "tensors": [t.tolist() for t in tensors], "main": du.is_main_process()}, f)
    du.destroy()


@pytest.mark.slow
def test_two_gloo_processes_reduce_and_gather(tmp_path, monkeypatch):
    for var in ("RANK", "WORLD_SIZE", "LOCAL_RANK", "SLURM_PROCID"):
        monkeypatch.delenv(var, raising=False)
    du.launch(_worker, 2, args=(str(tmp_path),))
    results = [json.loads((tmp_path / f"rank{r}.json").read_text()) for r in range(2)]
    for r, res in enumerate(results):
        assert res["world"] == 2 and res["total"] == 3.0 and res["mean"] == 1.5
        assert res["objects"] == [{"rank": 0, "name": "worker0"}, {"rank": 1, "name": "worker1"}]
        assert res["tensors"] == [[0.0, 0.0], [1.0, 1.0]]
        assert res["main"] == (r == 0)


def test_helpers_answer_sanely_without_initialisation():
    assert (du.get_rank(), du.get_world_size(), du.is_main_process()) == (0, 1, True)
    assert du.all_gather_object("x") == ["x"]
    assert du.all_reduce(torch.tensor([2.0])).item() == 2.0


@pytest.mark.parametrize("n,world", [(10, 2), (7, 2), (5, 3), (2, 4)])
def test_shards_cover_every_index_exactly_once(n, world):
    shards = [list(du.shard_indices(n, r, world)) for r in range(world)]
    assert sorted(i for s in shards for i in s) == list(range(n))


def test_slurm_variables_become_torchrun_variables(monkeypatch):
    for var in ("RANK", "WORLD_SIZE", "LOCAL_RANK", "MASTER_ADDR", "MASTER_PORT"):
        monkeypatch.delenv(var, raising=False)
    monkeypatch.setenv("SLURM_PROCID", "3")
    monkeypatch.setenv("SLURM_NTASKS", "8")
    monkeypatch.setenv("SLURM_LOCALID", "1")
    monkeypatch.setenv("SLURM_JOB_ID", "4242")
    monkeypatch.setenv("SLURM_NODELIST", "gpu[07-08],cpu1")
    du.env_from_slurm()
    env = os.environ
    assert (env["RANK"], env["WORLD_SIZE"], env["LOCAL_RANK"], env["MASTER_ADDR"]) == ("3", "8", "1", "gpu07")
    assert env["MASTER_PORT"] == str(20000 + 4242)
    assert du.get_local_rank() == 1
    assert du.first_slurm_host("node5") == "node5"
