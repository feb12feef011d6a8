"""Bit-flip fuzz of a checkpoint: every damaged file either loads identical values or raises ValueError.

A real training checkpoint (a Bayesian MLP after a few Adam steps with a cosine schedule,
the G1 modulator, a data-order generator, a history and extras) is written once; then,
for each of ``--flips`` trials, one random bit of the file is flipped and the damaged copy
is loaded into live objects. Outcomes:

* ``identical``: the load succeeded and every restored value (weights, optimizer,
  scheduler, modulator, RNG states, step, history, extras) equals the original;
* ``refused``: ``ValueError`` (grouped by reason), and the live objects are unchanged;
* ``CHANGED`` / ``other error`` / ``touched on refusal``: a failure of the guarantee.

Run: ``python benchmarks/checkpoint_fuzz.py --flips 2000`` (about a minute on 2 cores).
"""

from __future__ import annotations

import random
import sys
import tempfile
import time
from collections import Counter
from pathlib import Path
from typing import Any

import numpy as np
import torch

if __package__ in (None, ""):
    sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from benchmarks._common import base_parser, machine, print_table, write_results
from uncertlr.modulation import Ratio
from uncertlr.torch import Modulator, bayesian, fit, load_checkpoint, save_checkpoint
from uncertlr_models import MLP

N, EPOCHS, BATCH = 48, 2, 16


def build(seed: int = 0) -> dict[str, Any]:
    """Fresh live objects (the same construction every time, seeded)."""
    torch.manual_seed(seed)
    bnn = bayesian(MLP(6, (8,), 3), num_data=N, init_scale=0.05)
    opt = torch.optim.Adam(bnn.parameters(), lr=1e-2)
    sched = torch.optim.lr_scheduler.CosineAnnealingLR(opt, 20)
    mod = Modulator(Ratio(warmup=1)).attach(opt)
    return {
        "model": bnn,
        "optimizer": opt,
        "scheduler": sched,
        "modulator": mod,
        "generator": torch.Generator(),
    }


def write_reference(path: Path) -> None:
    """Train a few steps and save a checkpoint with every kind of state in it."""
    objs = build()
    g = torch.Generator().manual_seed(7)
    x, y = torch.randn(N, 6, generator=g), torch.randint(0, 3, (N,), generator=g)
    mod = objs["modulator"]
    from uncertlr.torch import batch_entropy

    hist = fit(
        objs["model"].elbo,
        objs["optimizer"],
        x,
        y,
        epochs=EPOCHS,
        batch_size=BATCH,
        scheduler=objs["scheduler"],
        generator=objs["generator"].manual_seed(3),
        before_step=lambda t: mod.observe(batch_entropy(t.outputs)),
        progress=False,
    )
    save_checkpoint(
        path,
        **objs,
        step=len(hist),
        history=hist,
        extra={
            "config": {"lr": 1e-2, "hidden": [8], "name": "fuzz"},
            "seconds": 1.5,
            "tensor": torch.arange(5.0),
        },
    )


def state_of(objs: dict[str, Any]) -> dict[str, Any]:
    """Everything a load restores, as plain comparable data."""
    return {
        "model": {k: v.clone() for k, v in objs["model"].state_dict().items()},
        "optimizer": objs["optimizer"].state_dict(),
        "scheduler": objs["scheduler"].state_dict(),
        "modulator": objs["modulator"].state_dict(),
        "generator": objs["generator"].get_state(),
        "torch_rng": torch.get_rng_state(),
        "numpy_rng": np.random.get_state()[1].copy(),  # noqa: NPY002
        "python_rng": random.getstate(),
    }


def same(a: Any, b: Any) -> bool:
    """Exact equality of nested plain data and tensors (NaN equals NaN bit pattern by bit pattern)."""
    if isinstance(a, torch.Tensor) or isinstance(b, torch.Tensor):
        return (
            isinstance(a, torch.Tensor)
            and isinstance(b, torch.Tensor)
            and a.dtype == b.dtype
            and a.shape == b.shape
            and bool(torch.equal(a.reshape(-1).view(torch.uint8), b.reshape(-1).view(torch.uint8)))
        )
    if isinstance(a, np.ndarray) or isinstance(b, np.ndarray):
        return np.array_equal(a, b)
    if isinstance(a, dict) and isinstance(b, dict):
        return list(a) == list(b) and all(same(a[k], b[k]) for k in a)
    if isinstance(a, (list, tuple)) and isinstance(b, (list, tuple)):
        return type(a) is type(b) and len(a) == len(b) and all(same(x, y) for x, y in zip(a, b))
    if isinstance(a, float) and isinstance(b, float) and a != a and b != b:
        return True
    return type(a) is type(b) and a == b


def reason(msg: str) -> str:
    for key, label in (
        ("does not match its SHA-256", "SHA-256 mismatch"),
        ("not a readable checkpoint", "unreadable (torch.load failed)"),
        ("pickled Python objects", "pickle globals refused"),
        ("not an uncertlr checkpoint", "wrong format tag"),
        ("SHA-256 is missing", "SHA-256 missing"),
        ("damaged uncertlr checkpoint", "structure check"),
        ("nothing was restored", "does not fit the live objects"),
    ):
        if key in msg:
            return label
    return "other ValueError"


def fuzz(flips: int, seed: int = 0, workdir: Path | None = None) -> dict[str, Any]:
    """Flip ``flips`` random single bits (one per trial); returns outcome counts and any failures."""
    rng = random.Random(seed)
    with tempfile.TemporaryDirectory(dir=workdir) as d:
        ref = Path(d) / "ref.pt"
        write_reference(ref)
        data = ref.read_bytes()
        objs = build(seed=1)
        load_checkpoint(ref, **objs)
        expected_ckpt = load_checkpoint(ref, **objs)
        expected = state_of(objs)
        outcomes: Counter[str] = Counter()
        failures: list[dict[str, Any]] = []
        damaged = Path(d) / "damaged.pt"
        for _ in range(flips):
            pos, bit = rng.randrange(len(data)), rng.randrange(8)
            b = bytearray(data)
            b[pos] ^= 1 << bit
            damaged.write_bytes(bytes(b))
            objs = build(seed=2)
            before = state_of(objs)
            try:
                ckpt = load_checkpoint(damaged, **objs)
            except ValueError as exc:
                if same(state_of(objs), before):
                    outcomes["refused: " + reason(str(exc))] += 1
                else:
                    outcomes["TOUCHED ON REFUSAL"] += 1
                    failures.append({"byte": pos, "bit": bit, "error": str(exc)[:300], "kind": "touched"})
                continue
            except Exception as exc:  # noqa: BLE001 - anything but ValueError breaks the promise
                outcomes["OTHER ERROR"] += 1
                failures.append({"byte": pos, "bit": bit, "error": f"{type(exc).__name__}: {exc}"[:300]})
                continue
            if same(state_of(objs), expected) and same(tuple(ckpt), tuple(expected_ckpt)):
                outcomes["loaded identical values"] += 1
            else:
                outcomes["CHANGED VALUES LOADED"] += 1
                failures.append({"byte": pos, "bit": bit, "kind": "changed"})
    return {"file_bytes": len(data), "flips": flips, "outcomes": dict(outcomes), "failures": failures}


def main() -> None:
    p = base_parser(__doc__.splitlines()[0])
    p.add_argument("--flips", type=int, default=2000)
    p.add_argument("--seed", type=int, default=0)
    args = p.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)
    flips = 100 if args.quick else args.flips
    t0 = time.perf_counter()
    res = fuzz(flips, args.seed)
    seconds = time.perf_counter() - t0
    rows = [
        {"outcome": k, "count": v, "share": v / flips}
        for k, v in sorted(res["outcomes"].items(), key=lambda kv: -kv[1])
    ]
    print_table(
        f"{flips} single-bit flips of a {res['file_bytes']:,}-byte checkpoint ({seconds:.0f} s)",
        rows,
        [("outcome", "outcome", "s"), ("count", "count", "d"), ("share", "share", ".3f")],
    )
    bad = len(res["failures"])
    print(f"failures of the guarantee: {bad}")
    write_results(
        "checkpoint_fuzz",
        rows,
        args.json,
        flips=flips,
        seed=args.seed,
        file_bytes=res["file_bytes"],
        failures=res["failures"],
        seconds=seconds,
        machine=machine(),
    )
    sys.exit(1 if bad else 0)


if __name__ == "__main__":
    main()
