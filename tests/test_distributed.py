"""Distributed utilities with two real gloo processes on CPU."""
import json
import os
import re
import shutil
import socket
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch
from tiny_run import REPO, TINY_CFG

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


def _node_data(node: Path, source: Path, missing: str | None) -> None:
    """`node/data`: the benchmark as that node sees it (a tree of links to `source`), without `missing`."""
    node.mkdir()
    shutil.copytree(source, node / "data", copy_function=os.symlink)
    if missing:
        (node / "data" / missing).unlink()


@pytest.mark.slow
@pytest.mark.parametrize("failing_rank", [1, 0])
def test_a_video_missing_on_one_node_ends_every_rank_with_that_nodes_one_line(synthetic_root, tmp_path,
                                                                               failing_rank):
    """Two torchrun nodes (one rank each) read a relative DATA.DATA_ROOT_DIR from their own working folder, as jobs
    whose nodes each hold a local copy of the data do; one node's copy lacks a training video. Both ranks end with
    that node's one line and exit code 5 before training (rank 1's line used to be buried under rank 0's gloo
    traceback, or rank 1 died with a store traceback when rank 0 refused alone)."""
    first = (synthetic_root / "train_few_shot.txt").read_text().splitlines()[0]
    missing = first.split("//", 1)[1]
    for rank in (0, 1):
        _node_data(tmp_path / f"node{rank}", synthetic_root, missing if rank == failing_rank else None)
    port, out = du.find_free_port(), tmp_path / "run"
    env = dict(os.environ, HF_HUB_OFFLINE="1", OMP_NUM_THREADS="1", PYTHONUNBUFFERED="1")
    for var in ("RANK", "WORLD_SIZE", "LOCAL_RANK", "SLURM_PROCID"):
        env.pop(var, None)
    start = time.time()
    nodes = [subprocess.Popen([sys.executable, "-m", "torch.distributed.run", "--nnodes", "2", "--nproc_per_node", "1",
                               "--node_rank", str(rank), "--master_addr", "127.0.0.1", "--master_port", str(port),
                               str(REPO / "runs" / "run.py"), "--cfg", TINY_CFG, "DATA.ANNO_DIR", "data",
                               "DATA.DATA_ROOT_DIR", "data", "OUTPUT_DIR", str(out), "TEST.ENABLE", "False"],
                              cwd=tmp_path / f"node{rank}", env=env, stdout=subprocess.DEVNULL,
                              stderr=subprocess.PIPE, text=True) for rank in (0, 1)]
    try:
        errs = [node.communicate(timeout=180)[1] for node in nodes]
    finally:
        for node in nodes:
            node.kill()
    assert time.time() - start < 120
    expected = (f"error: data/train_few_shot.txt: 1 of 30 listed videos are unusable (1 missing) under "
                f"DATA.DATA_ROOT_DIR 'data': data/{missing} (check DATA.DATA_ROOT_DIR and DATA.VIDEO_EXT; to run on "
                f"the videos you have, set DATA.ON_MISSING_VIDEO drop; DATA.ON_BAD_VIDEO resample replaces them by "
                f"other videos of their class) (on rank {failing_rank} of 2, host {socket.gethostname()})")
    for err in errs:
        # torchrun's agent reports a failed worker after it ended: its exit code, then the agent's own traceback
        agent = re.search(r"^E\d{4} .*\] failed \(exitcode: (\d+)\) local_rank: 0", err, re.MULTILINE)
        assert agent and agent[1] == "5", err[-3000:]
        worker = err[:agent.start()]
        lines = [line for line in worker.replace("\r", "\n").splitlines() if line.strip()]
        assert "Traceback" not in worker and lines[-1] == expected, worker[-3000:]
        assert sum(line.startswith("error: ") for line in lines) == 1
    assert not (out / "checkpoints").exists() and not (out / "metrics.jsonl").exists()
