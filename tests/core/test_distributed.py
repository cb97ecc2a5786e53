"""sslcore.distributed: no-ops in one process; a real 2-process gloo group for the gather's gradient."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch
import torch.distributed as dist
import torch.multiprocessing as mp

from sslcore import distributed
from sslcore.losses import ntxent

WORLD, LOCAL, DIM, TEMPERATURE = 2, 3, 8, 0.2


def test_single_process_defaults() -> None:
    assert not distributed.is_distributed()
    assert distributed.world_size() == 1
    assert distributed.rank() == 0


def test_gather_with_grad_is_identity_in_one_process() -> None:
    x = torch.randn(4, 3, requires_grad=True)
    out = distributed.gather_with_grad(x)
    assert out is x
    (out * 2).sum().backward()
    assert x.grad is not None
    torch.testing.assert_close(x.grad, torch.full_like(x, 2.0))


def test_all_reduce_mean_is_a_detached_copy_in_one_process() -> None:
    x = torch.randn(5, requires_grad=True)
    out = distributed.all_reduce_mean(x)
    torch.testing.assert_close(out, x.detach())
    assert not out.requires_grad
    assert out.data_ptr() != x.data_ptr()


def test_reductions_are_identities_in_one_process() -> None:
    assert distributed.mean_over_ranks({"loss": 1.5}) == {"loss": 1.5}
    assert distributed.sum_over_ranks(7) == 7
    assert distributed.collective_device() == torch.device("cpu")


class _Reduced(Exception):
    pass


def test_tensors_for_reductions_live_where_nccl_needs_them(monkeypatch: pytest.MonkeyPatch) -> None:
    """NCCL reduces CUDA tensors only: a CPU tensor fails with "No backend type associated with
    device type cpu" (found when the pretrain stage first ran on an H100). NCCL cannot run on this
    CPU-only machine, so this test fakes an initialized NCCL group: the one place in the suite that
    stands in for a component. It checks that the device is the current GPU under NCCL and that
    every reduction builds its tensor there (the meta device stands in for the GPU)."""
    monkeypatch.setattr(dist, "is_initialized", lambda: True)
    monkeypatch.setattr(dist, "get_world_size", lambda group=None: 2)
    monkeypatch.setattr(dist, "get_backend", lambda group=None: "nccl")
    monkeypatch.setattr(torch.cuda, "current_device", lambda: 1)
    assert distributed.collective_device() == torch.device("cuda", 1)

    seen: list[torch.device] = []

    def all_reduce(tensor: torch.Tensor, op: object = None) -> None:
        seen.append(tensor.device)
        raise _Reduced

    monkeypatch.setattr(distributed, "collective_device", lambda: torch.device("meta"))
    monkeypatch.setattr(dist, "all_reduce", all_reduce)
    for reduce in (lambda: distributed.mean_over_ranks({"loss": 1.0}), lambda: distributed.sum_over_ranks(1)):
        with pytest.raises(_Reduced):
            reduce()
    assert seen == [torch.device("meta")] * 2


def _full_batch() -> tuple[torch.Tensor, torch.Tensor]:
    g = torch.Generator().manual_seed(0)
    shape = (WORLD * LOCAL, DIM)
    return torch.randn(shape, generator=g, dtype=torch.float64), torch.randn(shape, generator=g, dtype=torch.float64)


def _gather_worker(rank: int, init_file: str, out_dir: str) -> None:
    """One rank: NT-Xent on its slice with negatives gathered from every rank, then backward."""
    torch.set_num_threads(1)
    dist.init_process_group("gloo", init_method=f"file://{init_file}", rank=rank, world_size=WORLD)
    try:
        z0_full, z1_full = _full_batch()
        rows = slice(rank * LOCAL, (rank + 1) * LOCAL)
        z0 = z0_full[rows].clone().requires_grad_()
        z1 = z1_full[rows].clone().requires_grad_()
        z0_all, z1_all = distributed.gather_with_grad(z0), distributed.gather_with_grad(z1)
        offset = distributed.rank() * LOCAL
        loss = ntxent(z0, z1, temperature=TEMPERATURE, z0_all=z0_all, z1_all=z1_all, offset=offset)
        loss.backward()
        torch.save(
            {
                "is_distributed": distributed.is_distributed(),
                "world_size": distributed.world_size(),
                "rank": distributed.rank(),
                "z0_all": z0_all.detach(),
                "loss": loss.detach(),
                "mean_loss": distributed.all_reduce_mean(loss),
                "means": distributed.mean_over_ranks({"a": float(rank), "b": 2.0 * rank}),
                "total": distributed.sum_over_ranks(rank + 1),
                "collective_device": str(distributed.collective_device()),
                "grad0": z0.grad,
                "grad1": z1.grad,
            },
            Path(out_dir) / f"rank{rank}.pt",
        )
    finally:
        dist.destroy_process_group()


@pytest.mark.timeout(120)
def test_gather_with_grad_across_two_processes(tmp_path: Path) -> None:
    """With DDP's gradient averaging, rank r's gradient / W must be the single-process gradient of
    the full-batch loss for rank r's rows (negatives from other ranks get their gradient back)."""
    # spawn, not fork: a forked child can inherit a held OpenMP/allocator lock and hang
    mp.spawn(_gather_worker, args=(str(tmp_path / "store"), str(tmp_path)), nprocs=WORLD, join=True)

    z0_full, z1_full = _full_batch()
    z0_full.requires_grad_()
    z1_full.requires_grad_()
    full = ntxent(z0_full, z1_full, temperature=TEMPERATURE)
    g0, g1 = torch.autograd.grad(full, [z0_full, z1_full])

    for rank in range(WORLD):
        out = torch.load(tmp_path / f"rank{rank}.pt", weights_only=True)
        assert out["is_distributed"] is True
        assert (out["world_size"], out["rank"]) == (WORLD, rank)
        torch.testing.assert_close(out["z0_all"], z0_full.detach())
        assert out["mean_loss"].item() == pytest.approx(full.item(), rel=1e-12)
        assert out["means"] == {"a": 0.5, "b": 1.0} and out["total"] == 3
        assert out["collective_device"] == "cpu", "gloo reduces CPU tensors"
        rows = slice(rank * LOCAL, (rank + 1) * LOCAL)
        torch.testing.assert_close(out["grad0"] / WORLD, g0[rows], rtol=1e-10, atol=1e-12)
        torch.testing.assert_close(out["grad1"] / WORLD, g1[rows], rtol=1e-10, atol=1e-12)
