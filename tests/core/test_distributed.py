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
        rows = slice(rank * LOCAL, (rank + 1) * LOCAL)
        torch.testing.assert_close(out["grad0"] / WORLD, g0[rows], rtol=1e-10, atol=1e-12)
        torch.testing.assert_close(out["grad1"] / WORLD, g1[rows], rtol=1e-10, atol=1e-12)
