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


# --------------------------------------------------------------------------- issue 13: what is saved loads


import dataclasses  # noqa: E402
import datetime  # noqa: E402
import enum  # noqa: E402
import io  # noqa: E402
import pathlib  # noqa: E402
import zipfile  # noqa: E402

import numpy as np  # noqa: E402
from hypothesis import given  # noqa: E402
from hypothesis import strategies as st  # noqa: E402

from uncertlr.modulation import Ratio  # noqa: E402
from uncertlr.torch import Modulator  # noqa: E402
from uncertlr.torch._ckptdoc import check_plain, digest  # noqa: E402


@dataclasses.dataclass
class _Config:
    lr: float = 0.1


class _Color(enum.Enum):
    RED = 1


NOT_PLAIN = {
    "numpy scalar": np.float32(1.0),
    "numpy int": np.int64(3),
    "numpy array": np.zeros(3),
    "path": pathlib.Path("/tmp/x"),
    "dataclass": _Config(),
    "datetime": datetime.datetime(2026, 1, 1),
    "enum": _Color.RED,
    "set": {1, 2},
    "bytes": b"",  # protocol-2 pickles of bytes call a global: torch.load(weights_only=True) refuses them
    "function": len,
    "object": object(),
}


@pytest.mark.parametrize("kind", sorted(NOT_PLAIN))
def test_save_refuses_what_load_would_refuse_naming_the_key(tmp_path, kind):
    bnn, opt, *_ = _setup()
    path = save_checkpoint(tmp_path / "c.pt", model=bnn, optimizer=opt, step=1)
    before = path.read_bytes()
    bad = NOT_PLAIN[kind]
    with pytest.raises(ValueError, match=r"extra\['run'\]\['value'\] is a .*cannot hold"):
        save_checkpoint(path, model=bnn, step=2, extra={"run": {"value": bad}})
    with pytest.raises(ValueError, match=r"history\[1\]\['acc'\] is a"):
        save_checkpoint(path, model=bnn, step=2, history=[{"loss": 1.0}, {"acc": bad}])
    assert path.read_bytes() == before and sorted(p.name for p in tmp_path.iterdir()) == ["c.pt"]
    # and the load side runs the same check: a file holding it (written behind our back) is refused
    doc = torch.load(path, weights_only=True)
    doc["extra"] = {"run": {"value": bad}}
    buf = io.BytesIO()
    try:
        torch.save(doc, buf)
    except Exception:  # noqa: BLE001 - some objects (functions, locals) cannot even be pickled
        return
    (tmp_path / "forged.pt").write_bytes(buf.getvalue())
    with pytest.raises(ValueError):
        load_checkpoint(tmp_path / "forged.pt", model=bnn)


_plain_leaves = st.one_of(
    st.none(),
    st.booleans(),
    st.integers(min_value=-(2**80), max_value=2**80),
    st.floats(allow_nan=True, allow_infinity=True),
    st.text(max_size=8),
    st.builds(
        lambda v, dt: torch.tensor(v, dtype=dt),
        st.lists(st.floats(-1e3, 1e3), max_size=4),
        st.sampled_from([torch.float32, torch.float64, torch.float16]),
    ),
)
_plain = st.recursive(
    _plain_leaves,
    lambda inner: st.one_of(
        st.lists(inner, max_size=3),
        st.lists(inner, max_size=3).map(tuple),
        st.dictionaries(st.one_of(st.text(max_size=5), st.integers(-5, 5)), inner, max_size=3),
    ),
    max_leaves=12,
)


def _same(a, b):
    if isinstance(a, torch.Tensor):
        return isinstance(b, torch.Tensor) and a.dtype == b.dtype and torch.equal(a, b)
    if isinstance(a, dict):
        return isinstance(b, dict) and list(a) == list(b) and all(_same(a[k], b[k]) for k in a)
    if isinstance(a, (list, tuple)):
        return type(a) is type(b) and len(a) == len(b) and all(_same(x, y) for x, y in zip(a, b))
    if isinstance(a, float) and a != a:
        return isinstance(b, float) and b != b
    return type(a) is type(b) and a == b


@given(value=_plain)
def test_any_plain_extra_round_trips_exactly(tmp_path_factory, value):
    bnn = bayesian(torch.nn.Linear(2, 2), num_data=4)
    path = save_checkpoint(tmp_path_factory.mktemp("c") / "c.pt", model=bnn, extra={"v": value})
    assert _same(load_checkpoint(path, model=bnn, restore_rng=False).extra["v"], value)


@given(value=_plain, where=st.integers(0, 5), bad=st.sampled_from(sorted(NOT_PLAIN)))
def test_a_non_plain_value_anywhere_is_refused_by_name(value, where, bad):
    nested, path = {"v": value, "bad": NOT_PLAIN[bad]}, "['bad']"
    for i in range(where):  # bury the bad value `where` levels deep, beside plain data
        nested, path = {"v": value, f"k{i}": nested}, f"['k{i}']{path}"
    with pytest.raises(ValueError) as err:
        check_plain(nested, "extra")
    assert str(err.value).startswith(f"extra{path} is a") and "cannot hold" in str(err.value)
    assert check_plain({"v": value}, "extra") is None and len(digest({"v": value})) == 64


def test_damaged_tensor_bytes_are_detected(tmp_path):
    bnn, opt, *_ = _setup()
    path = save_checkpoint(tmp_path / "c.pt", model=bnn, optimizer=opt, step=1)
    loc = bnn.posterior.loc.detach().clone()
    data = bytearray(path.read_bytes())
    with zipfile.ZipFile(path) as z:  # the largest tensor storage: flip one exponent bit in it
        info = max((i for i in z.infolist() if "/data/" in i.filename), key=lambda i: i.file_size)
    off = info.header_offset  # the local header's own name and extra-field lengths
    start = off + 30 + int.from_bytes(data[off + 26 : off + 28], "little")
    start += int.from_bytes(data[off + 28 : off + 30], "little")
    data[start + 3] ^= 0x40
    (tmp_path / "bad.pt").write_bytes(bytes(data))
    with pytest.raises(ValueError, match="does not match its SHA-256"):
        load_checkpoint(tmp_path / "bad.pt", model=bnn, optimizer=opt)
    assert torch.equal(bnn.posterior.loc, loc)
    # the same byte flipped in a checkpoint without its digest would have loaded silently
    damaged, intact = (torch.load(p, weights_only=True) for p in (tmp_path / "bad.pt", path))
    assert not _same(damaged, intact)


def test_bit_flip_fuzz_loads_identical_values_or_refuses(tmp_path):
    """A short run of benchmarks/checkpoint_fuzz.py (which runs ≥ 1,000 flips)."""
    from benchmarks.checkpoint_fuzz import fuzz

    res = fuzz(60, seed=13, workdir=tmp_path)
    assert res["failures"] == [], res["failures"][:3]
    assert sum(res["outcomes"].values()) == 60
    assert res["outcomes"].get("refused: SHA-256 mismatch", 0) > 10  # the digest is what catches most


def _state(bnn, opt, sched, gen):
    return (
        {k: v.clone() for k, v in bnn.state_dict().items()},
        copy.deepcopy(opt.state_dict()),
        sched.state_dict(),
        gen.get_state(),
        torch.get_rng_state(),
    )


def _equal_state(a, b):
    return _same(list(a), list(b))


def _trained(hidden=8, seed=0):
    torch.manual_seed(seed)
    bnn = bayesian(MLP(6, (hidden,), 3), num_data=N, init_scale=0.05)
    opt = torch.optim.Adam(bnn.parameters(), lr=1e-2)
    sched = torch.optim.lr_scheduler.CosineAnnealingLR(opt, 10)
    x, y = _data()
    fit(bnn.elbo, opt, x, y, epochs=1, batch_size=BATCH, scheduler=sched, progress=False)
    return bnn, opt, sched, torch.Generator().manual_seed(seed)


import copy  # noqa: E402


def test_a_checkpoint_that_does_not_fit_changes_nothing(tmp_path):
    small = _trained(hidden=8)
    path = save_checkpoint(
        tmp_path / "h8.pt", model=small[0], optimizer=small[1], scheduler=small[2], generator=small[3], step=5
    )
    bnn, opt, sched, gen = _trained(hidden=16, seed=1)
    before, kl = _state(bnn, opt, sched, gen), float(bnn.kl_const)
    with pytest.raises(ValueError, match=r"does not fit this model.*shape mismatch.*nothing was restored"):
        load_checkpoint(path, model=bnn, optimizer=opt, scheduler=sched, generator=gen)
    assert _equal_state(_state(bnn, opt, sched, gen), before) and float(bnn.kl_const) == kl
    # the model fits but the optimizer does not (another parameter grouping)
    bnn8, _, sched8, gen8 = _trained(hidden=8, seed=2)
    opt2 = torch.optim.Adam([{"params": [bnn8.posterior.loc]}, {"params": [bnn8.posterior.log_scale]}])
    before = _state(bnn8, opt2, sched8, gen8)
    with pytest.raises(ValueError, match="parameter groups"):
        load_checkpoint(path, model=bnn8, optimizer=opt2, generator=gen8)
    assert _equal_state(_state(bnn8, opt2, sched8, gen8), before)


def test_a_failure_while_restoring_puts_everything_back(tmp_path, monkeypatch):
    src = _trained(seed=0)
    mod_src = Modulator(Ratio()).attach(src[1])
    path = save_checkpoint(
        tmp_path / "c.pt",
        model=src[0],
        optimizer=src[1],
        scheduler=src[2],
        modulator=mod_src,
        generator=src[3],
        step=5,
    )
    bnn, opt, sched, gen = _trained(seed=3)
    mod = Modulator(Ratio()).attach(opt)
    before, mod_before = _state(bnn, opt, sched, gen), mod.state_dict()

    def boom(state, generator):
        raise RuntimeError("the RNG cannot take this state")

    # fails last, after the model, optimizer, scheduler and modulator were restored
    monkeypatch.setattr("uncertlr.torch.checkpoint.set_rng_state", boom)
    with pytest.raises(ValueError, match="could not be restored.*nothing was changed"):
        load_checkpoint(path, model=bnn, optimizer=opt, scheduler=sched, modulator=mod, generator=gen)
    assert _equal_state(_state(bnn, opt, sched, gen), before)
    assert _same(mod.state_dict(), mod_before)
    monkeypatch.undo()
    load_checkpoint(path, model=bnn, optimizer=opt, scheduler=sched, modulator=mod, generator=gen)
    assert torch.equal(bnn.posterior.loc, src[0].posterior.loc)


def test_a_device_that_is_not_present_is_named(tmp_path):
    bnn, *_ = _setup()
    path = save_checkpoint(tmp_path / "c.pt", model=bnn)
    if not torch.cuda.is_available():
        with pytest.raises(ValueError, match="no cuda device"):
            load_checkpoint(path, model=bnn, map_location="cuda")
    with pytest.raises(ValueError, match="not a device"):
        load_checkpoint(path, model=bnn, map_location="gpu0")
    # a file saved on a GPU, read on a CPU-only machine without map_location (rewritten by hand)
    out = io.BytesIO()
    with zipfile.ZipFile(path) as src, zipfile.ZipFile(out, "w", zipfile.ZIP_STORED) as z:
        for info in src.infolist():
            data = src.read(info)
            if info.filename.endswith("data.pkl"):
                data = data.replace(b"X\x03\x00\x00\x00cpu", b"X\x06\x00\x00\x00cuda:0")
            z.writestr(info.filename, data)
    (tmp_path / "gpu.pt").write_bytes(out.getvalue())
    if not torch.cuda.is_available():
        with pytest.raises(ValueError, match="saved on a device this machine does not have"):
            load_checkpoint(tmp_path / "gpu.pt", model=bnn, map_location=None)
    assert load_checkpoint(tmp_path / "gpu.pt", model=bnn).step == 0  # map_location="cpu", the default
