"""Checkpoint/resume: bit-identical continuation, safe loading, atomic writes."""

from __future__ import annotations

import pytest
import torch

from uncertlr.torch import bayesian, fit
from uncertlr.torch.checkpoint import load_checkpoint, save_checkpoint
from uncertlr_models import MLP

N, EPOCHS, BATCH = 48, 3, 10  # 5 steps per epoch (the last batch is short)


def _setup(seed=0):
    torch.manual_seed(seed)
    bnn = bayesian(MLP(6, (8,), 3, dropout=0.1), num_data=N, init_scale=0.05)
    opt = torch.optim.Adam(bnn.parameters(), lr=1e-2)
    sched = torch.optim.lr_scheduler.CosineAnnealingLR(opt, EPOCHS * 5)
    return bnn, opt, sched, torch.Generator().manual_seed(123)


def _data():
    g = torch.Generator().manual_seed(7)
    return torch.randn(N, 6, generator=g), torch.randint(0, 3, (N,), generator=g)


@pytest.mark.parametrize("k", [3, 5, 7])  # mid-epoch, exactly at an epoch boundary, mid-epoch later
def test_resume_is_bit_identical(tmp_path, k):
    x, y = _data()
    bnn, opt, sched, gen = _setup()
    ref_hist = fit(
        bnn.elbo, opt, x, y, epochs=EPOCHS, batch_size=BATCH, scheduler=sched, generator=gen, progress=False
    )
    reference = [p.detach().clone() for p in bnn.parameters()]

    bnn, opt, sched, gen = _setup()
    path = tmp_path / "ckpt.pt"

    def stop_at_k(state):
        if state.step == k:
            save_checkpoint(
                path,
                model=bnn,
                optimizer=opt,
                scheduler=sched,
                generator=state.resume_generator_state,
                step=state.step,
                history=state.history,
            )
            return True
        return False

    fit(
        bnn.elbo,
        opt,
        x,
        y,
        epochs=EPOCHS,
        batch_size=BATCH,
        scheduler=sched,
        generator=gen,
        progress=False,
        on_step=stop_at_k,
    )
    torch.manual_seed(999)  # the resumed run must not depend on anything but the checkpoint
    bnn2, opt2, sched2, gen2 = _setup(seed=5)
    ckpt = load_checkpoint(path, model=bnn2, optimizer=opt2, scheduler=sched2, generator=gen2)
    assert ckpt.step == k and len(ckpt.history) == k
    hist = fit(
        bnn2.elbo,
        opt2,
        x,
        y,
        epochs=EPOCHS,
        batch_size=BATCH,
        scheduler=sched2,
        generator=gen2,
        progress=False,
        start_step=ckpt.step,
        history=ckpt.history,
    )
    assert [h["loss"] for h in hist] == [h["loss"] for h in ref_hist]
    for a, b in zip(bnn2.parameters(), reference):
        assert torch.equal(a, b)


class Evil:
    def __reduce__(self):
        return (print, ("this would run arbitrary code",))


def test_pickled_object_is_refused(tmp_path):
    bnn, opt, *_ = _setup()
    path = save_checkpoint(tmp_path / "ok.pt", model=bnn, optimizer=opt)
    doc = torch.load(path, weights_only=True)
    doc["extra"] = {"payload": Evil()}
    torch.save(doc, tmp_path / "evil.pt")
    with pytest.raises(ValueError, match="pickled Python objects"):
        load_checkpoint(tmp_path / "evil.pt", model=bnn)
    with pytest.raises(ValueError, match="not an uncertlr checkpoint"):
        torch.save({"model": bnn.state_dict()}, tmp_path / "other.pt")
        load_checkpoint(tmp_path / "other.pt", model=bnn)
    (tmp_path / "trunc.pt").write_bytes(path.read_bytes()[:100])
    with pytest.raises(ValueError, match="not a readable checkpoint"):
        load_checkpoint(tmp_path / "trunc.pt", model=bnn)
    with pytest.raises(FileNotFoundError):
        load_checkpoint(tmp_path / "missing.pt", model=bnn)


def test_interrupted_save_keeps_the_previous_checkpoint(tmp_path, monkeypatch):
    bnn, opt, *_ = _setup()
    path = save_checkpoint(tmp_path / "ckpt.pt", model=bnn, optimizer=opt, step=1)
    before = path.read_bytes()

    def crash(*a, **k):
        raise KeyboardInterrupt

    monkeypatch.setattr(torch, "save", crash)
    with pytest.raises(KeyboardInterrupt):
        save_checkpoint(path, model=bnn, optimizer=opt, step=2)
    assert path.read_bytes() == before
    assert sorted(p.name for p in tmp_path.iterdir()) == ["ckpt.pt"]


def test_missing_state_is_reported(tmp_path):
    bnn, opt, sched, _ = _setup()
    path = save_checkpoint(tmp_path / "c.pt", model=bnn)
    with pytest.raises(ValueError, match="no optimizer state"):
        load_checkpoint(path, model=bnn, optimizer=opt)
    with pytest.raises(ValueError, match="no data-order generator"):
        load_checkpoint(path, model=bnn, generator=torch.Generator())


def test_checkpoint_has_no_pickled_objects(tmp_path):
    bnn, opt, sched, gen = _setup()
    path = save_checkpoint(
        tmp_path / "c.pt",
        model=bnn,
        optimizer=opt,
        scheduler=sched,
        generator=gen,
        step=3,
        history=[{"loss": 1.0}],
        extra={"config": {"lr": 0.01, "hidden": [8]}},
    )
    doc = torch.load(
        path, weights_only=True
    )  # raises if anything needs unpickling beyond tensors and plain data
    assert doc["step"] == 3 and doc["extra"]["config"]["hidden"] == [8] and "generator" in doc["rng"]
