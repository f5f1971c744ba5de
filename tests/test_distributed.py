"""DDP on 2 CPU processes (gloo): sharded re-imputation, identical ranks, resume, a failing rank."""

import os
import subprocess
from pathlib import Path

import pytest
import torch

from conftest import ROOT, read_imputations, read_rounds, subprocess_env, train_command, train_subprocess
from miri_lightning.callbacks.reimputation import shard
from miri_lightning.data.masks import MCAR
from miri_lightning.data.sources import Shapes

N = 65  # not divisible by the 2 ranks
DDP = ["--data.source.init_args.num_images", str(N), "--rounds.solve_batch_size", "8",
       "--rounds.num_rounds", "2", "--rounds.steps", "2",
       "--trainer.strategy", "ddp", "--trainer.accelerator", "cpu", "--trainer.devices", "2"]


@pytest.fixture(scope="module")
def ddp_run(tmp_path_factory) -> Path:
    run = tmp_path_factory.mktemp("ddp") / "run"
    done = train_subprocess(run, *DDP, "--trainer.callbacks+=ddp_probe.DumpState")
    assert done.returncode == 0, done.stderr[-3000:]
    return run


@pytest.mark.parametrize("n,world", [(65, 2), (64, 2), (10, 3), (2, 4), (7, 1)])
def test_shards_are_disjoint_covering_and_equally_long(n, world):
    shards = [shard(n, rank, world) for rank in range(world)]
    assert len({len(s) for s in shards}) == 1
    real = torch.cat(shards)
    real = real[real >= 0]
    assert sorted(real.tolist()) == list(range(n))


@pytest.mark.slow
def test_both_ranks_hold_the_same_collection_with_observed_entries_exact(ddp_run):
    states = [torch.load(ddp_run / f"state_rank{r}.pt", weights_only=True) for r in (0, 1)]
    assert torch.equal(states[0]["imputations"], states[1]["imputations"])
    assert states[0]["round"] == states[1]["round"] == 2
    truth = Shapes(num_images=N, image_size=16, seed=0).load().images
    masks = MCAR(missing_rate=0.6, seed=0)(truth)  # the same masks a 1-process run draws
    assert torch.equal(states[0]["masks"], masks)
    imputed = states[0]["imputations"]
    assert imputed.shape == truth.shape
    assert torch.equal(imputed[masks], truth[masks])
    saved, _ = read_imputations(ddp_run)  # rank 0's file holds that same collection
    assert torch.equal(saved, imputed)


@pytest.mark.slow
def test_rounds_are_logged_once(ddp_run):
    assert [r["round"] for r in read_rounds(ddp_run)] == [0, 1, 2]
    assert sorted(p.name for p in (ddp_run / "grids").iterdir()) == [f"round_00{r}.png" for r in range(3)]
    metrics = next((ddp_run / "csv").rglob("metrics.csv")).read_text().splitlines()
    header = metrics[0].split(",")
    psnr = header.index("round/psnr")
    assert sum(1 for line in metrics[1:] if line.split(",")[psnr]) == 3


@pytest.mark.slow
def test_resume_from_a_ddp_checkpoint_continues_in_round_two(ddp_run, tmp_path):
    resumed = tmp_path / "resumed"
    done = train_subprocess(resumed, *DDP, "--ckpt_path", str(ddp_run / "checkpoints" / "round001.ckpt"))
    assert done.returncode == 0, done.stderr[-3000:]
    assert [r["round"] for r in read_rounds(resumed)] == [2]
    assert torch.equal(read_imputations(resumed)[0], read_imputations(ddp_run)[0])


@pytest.mark.slow
def test_memory_mapped_state_is_one_file_shared_by_both_ranks(ddp_run, tmp_path):
    run = tmp_path / "memmap"
    done = train_subprocess(run, *DDP, "--data.state", "memmap", "--trainer.callbacks+=ddp_probe.DumpState")
    assert done.returncode == 0, done.stderr[-3000:]
    states = [torch.load(run / f"state_rank{r}.pt", weights_only=True) for r in (0, 1)]
    assert torch.equal(states[0]["imputations"], states[1]["imputations"])
    assert sorted(p.name for p in (run / "state" / "node0").glob("*.npy")) == [
        "imputations_round000.npy", "imputations_round001.npy", "imputations_round002.npy", "masks.npy", "truth.npy"]
    expected = torch.load(ddp_run / "state_rank0.pt", weights_only=True)["imputations"]
    assert torch.equal(states[0]["imputations"], expected)  # the same run as with the state in memory


@pytest.mark.slow
def test_state_on_the_device_gives_every_rank_the_same_collection_as_the_dataloader(ddp_run, tmp_path):
    run = tmp_path / "on_device"
    done = train_subprocess(run, *DDP, "--data.on_device", "true", "--trainer.callbacks+=ddp_probe.DumpState")
    assert done.returncode == 0, done.stderr[-3000:]
    expected = torch.load(ddp_run / "state_rank0.pt", weights_only=True)["imputations"]
    for rank in (0, 1):
        state = torch.load(run / f"state_rank{rank}.pt", weights_only=True)
        assert torch.equal(state["imputations"], expected)
        assert torch.equal(state["resident"], expected)  # the device copy followed every round


@pytest.mark.slow
def test_two_nodes_under_torchrun_each_keep_their_own_state_copy(ddp_run, tmp_path):
    """Two torchrun "nodes" of one process each, on this machine, with memory-mapped state."""
    run = tmp_path / "nodes"
    args = [*DDP, "--trainer.devices", "1", "--trainer.num_nodes", "2", "--data.state", "memmap",
            "--trainer.callbacks+=ddp_probe.DumpState"]
    port = str(29500 + os.getpid() % 1000)
    nodes = [subprocess.Popen(train_command(run, *args, launcher=(
        "-m", "torch.distributed.run", "--nnodes", "2", "--nproc_per_node", "1", "--node_rank", str(k),
        "--master_addr", "127.0.0.1", "--master_port", port)), cwd=ROOT, env=subprocess_env(),
        stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True) for k in (0, 1)]
    errors = [node.communicate(timeout=240)[1] for node in nodes]
    assert [node.returncode for node in nodes] == [0, 0], errors[0][-2000:] + errors[1][-2000:]
    for k in (0, 1):
        assert (run / "state" / f"node{k}" / "imputations_round002.npy").is_file()
    states = [torch.load(run / f"state_rank{r}.pt", weights_only=True) for r in (0, 1)]
    expected = torch.load(ddp_run / "state_rank0.pt", weights_only=True)["imputations"]
    assert torch.equal(states[0]["imputations"], states[1]["imputations"])
    assert torch.equal(states[0]["imputations"], expected)


@pytest.mark.slow
def test_a_failing_rank_ends_the_run_with_its_message(tmp_path):
    done = train_subprocess(tmp_path / "fail", *DDP, "--trainer.callbacks+=ddp_probe.FailOnRankOne", timeout=180)
    assert done.returncode != 0
    assert "injected failure on rank 1" in done.stdout + done.stderr
