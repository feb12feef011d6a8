"""Near-OOD detection by feature density on an MLP and a CNN: which layers to read.

Digits 0-4 train (less the shift benchmark's 15% validation part of each seed), digits 5-9 of the test
set are the out-of-distribution inputs. Each network is trained as the shift benchmark's deterministic net
(Adam, cosine schedule, weight decay 1e-3, batch 64) and scored four ways: the softmax entropy,
``FeatureDensity(net)`` (the head's input), ``FeatureDensity(net, layers="all")`` (every Linear layer's
input) and, on the CNN, every convolution's and Linear layer's input named in ``layers=`` (a convolution's
input averaged over its positions). Nothing is tuned on the out-of-distribution digits.

Networks: ``mlp`` (64-128-128-5 ReLU, the shift benchmark's) and ``cnn`` (``uncertlr_models.ImageCNN``:
conv 16 -> max-pool -> conv 32 -> 2x2 average pool -> linear).

Usage::

    python benchmarks/feature_density.py                 # 3 seeds, both networks (~1 min on 2 cores)
    python benchmarks/feature_density.py --quick         # one seed
"""

from __future__ import annotations

import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import numpy as np  # noqa: E402
import torch  # noqa: E402

from benchmarks._common import base_parser, print_table, write_results  # noqa: E402
from benchmarks._shift_methods import _fit  # noqa: E402
from benchmarks.shift import DIGITS, _mlp, _t, _val_split  # noqa: E402
from uncertlr import metrics  # noqa: E402
from uncertlr.data import load_digits  # noqa: E402
from uncertlr.torch import FeatureDensity, PointNetwork  # noqa: E402

NETS = ("mlp", "cnn")
SCORES = ("entropy", "density", "density-all", "density-conv")


def _net(kind: str) -> torch.nn.Module:
    if kind == "mlp":
        return _mlp(64, DIGITS, 5)()
    from uncertlr_models import ImageCNN

    class Digits(torch.nn.Module):  # [N, 64] pixels -> [N, 8, 8] images
        def __init__(self) -> None:
            super().__init__()
            self.cnn = ImageCNN(1, 5)

        def forward(self, x: torch.Tensor) -> torch.Tensor:
            return self.cnn(x.view(-1, 8, 8))

    return Digits()


def run_one(kind: str, seed: int) -> dict[str, float]:
    split = load_digits(seed=0)
    idx = np.flatnonzero(split.y_train < 5)
    tr, _ = _val_split(len(idx), seed)
    x, y = _t(split.x_train[idx[tr]]), _t(split.y_train[idx[tr]])
    x_in, x_out = _t(split.x_test[split.y_test < 5]), _t(split.x_test[split.y_test >= 5])
    torch.manual_seed(seed)
    model = PointNetwork(_net(kind))
    train_s = _fit(
        model, x, y, epochs=DIGITS.det_epochs, lr=DIGITS.det_lr, cfg=DIGITS, seed=seed, weight_decay=1e-3
    )
    with torch.no_grad():
        p_in, p_out = model.predict(x_in), model.predict(x_out)  # [1, N, 5]
    row: dict[str, float] = {
        "accuracy": float(metrics.accuracy(p_in, split.y_test[split.y_test < 5])),
        "train_s": train_s,
        "entropy": float(
            metrics.ood_auroc(metrics.predictive_entropy(p_in), metrics.predictive_entropy(p_out))
        ),
    }
    readable = [n for n, m in model.net.named_modules() if isinstance(m, (torch.nn.Linear, torch.nn.Conv2d))]
    has_conv = any(isinstance(m, torch.nn.Conv2d) for m in model.net.modules())
    for name, layers in (("density", None), ("density-all", "all"), ("density-conv", readable)):
        if name == "density-conv" and not has_conv:
            row[name] = float("nan")
            continue
        t0 = time.perf_counter()
        d = FeatureDensity(model, layers=layers).fit(x, y)
        row[f"{name}_fit_s"] = time.perf_counter() - t0
        row[name] = float(metrics.ood_auroc(d.score(x_in).numpy(), d.score(x_out).numpy()))
        row[f"{name}_layers"] = len(d.layer_names)  # type: ignore[assignment]
    return row


def main(argv: list[str] | None = None) -> int:
    p = base_parser(__doc__.splitlines()[0])
    p.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2])
    p.add_argument("--nets", nargs="+", choices=NETS, default=list(NETS))
    args = p.parse_args(argv)
    if args.threads:
        torch.set_num_threads(args.threads)
    seeds = args.seeds[:1] if args.quick else args.seeds
    rows = [{"net": kind, "seed": s, **run_one(kind, s)} for kind in args.nets for s in seeds]
    summary = []
    for kind in args.nets:
        mine = [r for r in rows if r["net"] == kind]
        out: dict[str, object] = {"net": kind, "seeds": len(mine)}
        for k in ("accuracy", *SCORES, "train_s"):
            v = np.array([r[k] for r in mine], dtype=float)
            if np.isnan(v).all():
                out[k] = out[f"{k}_se"] = None
                continue
            out[k] = float(v.mean())
            out[f"{k}_se"] = float(v.std(ddof=1) / np.sqrt(len(v))) if len(v) > 1 else 0.0
        out["layers_all"] = mine[0]["density-all_layers"]
        out["layers_conv"] = mine[0].get("density-conv_layers")
        summary.append(out)

    def cell(r: dict[str, object], k: str) -> str | None:
        return None if r[k] is None else f"{r[k]:.4f} ± {r[f'{k}_se']:.4f}"

    table = [{**r, **{f"{k}_pm": cell(r, k) for k in SCORES}} for r in summary]
    print_table(
        f"near-OOD AUROC, digits 0-4 vs 5-9 ({len(seeds)} seed(s))",
        table,
        [
            ("net", "net", "s"),
            ("accuracy", "accuracy (0-4)", ".4f"),
            ("entropy_pm", "entropy", "s"),
            ("density_pm", "density (head)", "s"),
            ("density-all_pm", "every Linear", "s"),
            ("density-conv_pm", "Linear + conv", "s"),
            ("train_s", "train s", ".1f"),
        ],
    )
    write_results("feature_density", rows, args.json, summary=summary)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
