"""Worker for the DDP test: run with torchrun; trains a BNN and saves its parameters per rank.

Usage: torchrun --standalone --nproc_per_node=2 tests/torch/_ddp_worker.py OUT_DIR [STEPS] [MODES]
With no process group (plain python) it trains on the combined batch as a single process.
MODES (comma-separated, default ``plain``) are trained one after the other in the same processes,
so one launch serves several tests: ``plain`` is Adam alone; with ``g1`` an LR modulator (G1 rule
on the batch's predictive entropy) scales every step: each process observes the entropy of its own
shard, and the modulator all-reduces it.
"""

import sys
from pathlib import Path

import torch
from torch.nn.parallel import DistributedDataParallel as DDP

from uncertlr.modulation import Ratio
from uncertlr.torch import Modulator, batch_entropy, bayesian, fit
from uncertlr.torch.distributed import ELBOLoss, init_from_env
from uncertlr_models import MLP


def main() -> None:
    out, steps = Path(sys.argv[1]), int(sys.argv[2]) if len(sys.argv) > 2 else 12
    modes = sys.argv[3].split(",") if len(sys.argv) > 3 else ["plain"]
    info = init_from_env()
    for mode in modes:
        if mode not in ("plain", "g1"):
            raise SystemExit(f"unknown mode {mode!r}")
        train(out, steps, mode == "g1", info)
    if info.world_size > 1:
        torch.distributed.destroy_process_group()


def train(out: Path, steps: int, modulated: bool, info) -> None:
    torch.manual_seed(0)
    g = torch.Generator().manual_seed(1)
    x, y = torch.randn(96, 10, generator=g), torch.randint(0, 4, (96,), generator=g)
    bnn = bayesian(MLP(10, (16,), 4), num_data=96, init_scale=0.05)
    init = [p.detach().clone() for p in bnn.parameters()]
    loss = DDP(ELBOLoss(bnn), broadcast_buffers=False) if info.world_size > 1 else ELBOLoss(bnn)
    opt = torch.optim.Adam(bnn.parameters(), lr=1e-2)
    local_signals: list[float] = []
    before_step = None
    if modulated:
        mod = Modulator(Ratio(kappa=-0.5, warmup=0)).attach(opt)

        def before_step(terms):
            s = batch_entropy(terms.outputs)  # this process's shard only
            local_signals.append(float(s))
            mod.observe(s)

    hist = fit(
        loss,
        opt,
        x,
        y,
        epochs=steps // 4,
        batch_size=24,
        generator=torch.Generator().manual_seed(2),
        shard=(info.rank, info.world_size) if info.world_size > 1 else None,
        before_step=before_step,
        progress=False,
    )
    name = ("g1-" if modulated else "") + (f"rank{info.rank}.pt" if info.world_size > 1 else "single.pt")
    doc = {
        "params": [p.detach() for p in bnn.parameters()],
        "init": init,
        "losses": [h["loss"] for h in hist],
    }
    if modulated:
        doc.update(
            local_signals=torch.tensor(local_signals),
            signals=torch.tensor([float(h["signal"]) for h in mod.history]),
            scales=torch.tensor([float(h["scale"]) for h in mod.history]),
            lrs=torch.tensor([h["lr"] for h in hist]),
        )
    torch.save(doc, out / name)


if __name__ == "__main__":
    main()
