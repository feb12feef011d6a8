"""Training-step time of Bayesian networks relative to a deterministic Adam step, in one process.

Network: 784-400-400-10 ReLU MLP, batch 128, synthetic data (the step time does not
depend on the values). Every method runs one optimizer step per call; ratios are
median step time / median deterministic step time over interleaved blocks.

Rows:
  deterministic        plain MLP, Adam, cross-entropy (the baseline)
  deterministic (A/A)  a second copy of the baseline: its ratio is the run's noise floor
  uncertlr             uncertlr.torch.bayesian(...) + Adam over bnn.parameters() (exact mean-field ELBO;
                       antithetic noise, the default: every other step negates the previous draw)
  uncertlr, independent noise   the same with antithetic=False (a fresh draw every step)
  uncertlr, ATen noise the noise from ATen's normal_ with two generators instead of the compiled Philox
                       sampler (the same row as "uncertlr" where that sampler is not available)
  uncertlr, eager sample/KL  the sample and KL in eager PyTorch (five passes forward, four backward) instead
                       of the compiled kernels' one pass each
  plain-torch MF       a straightforward hand-written mean-field step (softplus scales, autograd KL)
  pyro (hand-written)  PyroModule + PyroSample N(0,1) priors + AutoNormal + TraceMeanField_ELBO + torch Adam
  tyxe                 tyxe.VariationalBNN + AutoNormal, SVI step as in its fit() (skipped if it cannot import)
  ivon                 ivon-opt's IVON optimizer, 1 MC sample (skipped if it cannot import)

  uncertlr compiled    torch.compile(bnn.loss) (--compile; its cold compile time is printed)
  deterministic compiled  the deterministic loss under torch.compile (--compile; the compiled row's baseline)
  uncertlr, one noise stream   the noise from torch.randn (one generator, one thread) (--variants)
  deterministic / uncertlr, fused Adam   both steps with torch.optim.Adam(fused=True) (--fused)

--zoo adds the networks a new user would try, each BNN step against the same network's
deterministic Adam step (target <= 1.15): ImageCNN on 28x28 images (conv), SpeechCNN and
SpeechCRNN on 40x64 log-mel features (conv; conv + GRU), TransformerClassifier on 64 tokens
(attention); batch 64, synthetic data.

Usage:
    python benchmarks/step_time.py            # full run (~2 minutes on 2 cores)
    python benchmarks/step_time.py --quick    # smoke run
    python benchmarks/step_time.py --profile  # also print where uncertlr's step spends its time
    python benchmarks/step_time.py --zoo --no-baselines   # uncertlr on conv/recurrent/attention nets
"""

from __future__ import annotations

import math
import statistics
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import torch  # noqa: E402
import torch.nn.functional as F  # noqa: E402
from torch import nn  # noqa: E402

from benchmarks._common import (  # noqa: E402
    base_parser,
    interleaved_blocks,
    interleaved_medians,
    print_table,
    setup_clock,
    write_results,
)

DIMS = (784, 400, 400, 10)
BATCH = 128
NUM_DATA = 60_000
TARGET = 2.0
ZOO_TARGET = 1.15
TYXE_NOTE: list[str] = []


def mlp() -> nn.Sequential:
    return nn.Sequential(nn.Linear(784, 400), nn.ReLU(), nn.Linear(400, 400), nn.ReLU(), nn.Linear(400, 10))


def deterministic(x, y, fused: bool | None = None):
    net = mlp()
    opt = torch.optim.Adam(net.parameters(), lr=1e-3, fused=fused)

    def step():
        opt.zero_grad()
        F.cross_entropy(net(x), y).backward()
        opt.step()

    return step


def deterministic_compiled(x, y):
    """The deterministic step with ``torch.compile`` of the loss (the fair baseline of the compiled BNN)."""
    net = mlp()
    opt = torch.optim.Adam(net.parameters(), lr=1e-3)
    loss = torch.compile(lambda a, b: F.cross_entropy(net(a), b))

    def step():
        opt.zero_grad()
        loss(x, y).backward()
        opt.step()

    return step


def uncertlr_bnn(x, y, antithetic: bool = True, fused: bool | None = None):
    from uncertlr import priors
    from uncertlr.torch import bayesian

    bnn = bayesian(mlp(), num_data=NUM_DATA, prior=priors.Normal(1.0), init_scale=1e-3, antithetic=antithetic)
    opt = torch.optim.Adam(bnn.parameters(), lr=1e-3, fused=fused)

    def step():
        opt.zero_grad()
        bnn.loss(x, y).backward()
        opt.step()

    return step


def uncertlr_independent(x, y):
    """uncertlr's step with independent noise every step (``antithetic=False``: twice the draws)."""
    return uncertlr_bnn(x, y, antithetic=False)


def deterministic_fused(x, y):
    """The deterministic step with torch's fused Adam kernel (``fused=True``; what the app pipeline uses)."""
    return deterministic(x, y, fused=True)


def uncertlr_fused(x, y):
    """uncertlr's step with torch's fused Adam kernel (``fused=True``; what the app pipeline uses)."""
    return uncertlr_bnn(x, y, fused=True)


def _patched_while_running(step, module, **attrs):
    """``step`` with ``module``'s attributes set to ``attrs`` while it runs (a path threshold, to turn it off)."""

    def patched():
        saved = {k: getattr(module, k) for k in attrs}
        for k, v in attrs.items():
            setattr(module, k, v)
        try:
            step()
        finally:
            for k, v in saved.items():
                setattr(module, k, v)

    return patched


def uncertlr_eager_sample(x, y):
    """uncertlr's step with the eager sample/KL kernel (the compiled one-pass forward and backward off)."""
    from uncertlr.torch import _meanfield

    return _patched_while_running(uncertlr_bnn(x, y), _meanfield, NATIVE_MIN_WEIGHTS=2**62)


def uncertlr_aten_noise(x, y):
    """uncertlr's step with ATen's sampler from two generators (the compiled Philox sampler off)."""
    from uncertlr.torch import _noise

    return _patched_while_running(uncertlr_bnn(x, y), _noise, NATIVE_MIN_ELEMENTS=2**62)


def uncertlr_one_stream(x, y):
    """uncertlr's step with the noise from ``torch.randn`` (one mt19937 stream on one thread)."""
    from uncertlr.torch import _noise

    off = {"NATIVE_MIN_ELEMENTS": 2**62, "PARALLEL_MIN_ELEMENTS": 2**62}
    return _patched_while_running(uncertlr_bnn(x, y), _noise, **off)


def uncertlr_compiled(x, y):
    """uncertlr's step with ``torch.compile(bnn.loss)`` (inductor); the first call compiles."""
    from uncertlr import priors
    from uncertlr.torch import bayesian

    bnn = bayesian(mlp(), num_data=NUM_DATA, prior=priors.Normal(1.0), init_scale=1e-3)
    opt = torch.optim.Adam(bnn.parameters(), lr=1e-3)
    loss = torch.compile(bnn.loss)

    def step():
        opt.zero_grad()
        loss(x, y).backward()
        opt.step()

    return step


def zoo() -> dict:
    """name -> (network factory, inputs [64, ...]) for the conv / recurrent / attention rows."""
    from uncertlr_models import ImageCNN, SpeechCNN, SpeechCRNN, TransformerClassifier

    g = torch.Generator().manual_seed(0)
    return {
        "ImageCNN (conv, 28x28)": (lambda: ImageCNN(1, 10), torch.randn(64, 1, 28, 28, generator=g)),
        "SpeechCNN (conv, 40x64)": (lambda: SpeechCNN(40, 10), torch.randn(64, 40, 64, generator=g)),
        "SpeechCRNN (conv + GRU)": (lambda: SpeechCRNN(40, 10), torch.randn(64, 40, 64, generator=g)),
        "Transformer (attention)": (
            lambda: TransformerClassifier(1000, 10, d_model=128, heads=4, layers=2, max_len=64),
            torch.randint(0, 1000, (64, 64), generator=g),
        ),
    }


def zoo_rows(blocks: int, steps: int, repeats: int, clock=time.perf_counter) -> list[dict]:
    from uncertlr import priors
    from uncertlr.torch import bayesian

    rows = []
    y = torch.randint(0, 10, (64,))
    for name, (make, x) in zoo().items():
        torch.manual_seed(0)
        net = make()
        opt = torch.optim.Adam(net.parameters(), lr=1e-3)
        bnn = bayesian(make(), num_data=NUM_DATA, prior=priors.Normal(1.0), init_scale=1e-3)
        bopt = torch.optim.Adam(bnn.parameters(), lr=1e-3)

        def det(net=net, opt=opt, x=x):
            opt.zero_grad()
            F.cross_entropy(net(x), y).backward()
            opt.step()

        def bnn_step(bnn=bnn, bopt=bopt, x=x):
            bopt.zero_grad()
            bnn.loss(x, y).backward()
            bopt.step()

        runs = [
            interleaved_blocks({"det": det, "bnn": bnn_step}, blocks=blocks, steps=steps, clock=clock)
            for _ in range(repeats)
        ]
        # paired: each block's BNN time over the deterministic time in the same block, the median over blocks
        # (these nets' step times wander by 10-30% between stretches of a run on a shared VM)
        ratios = sorted(statistics.median(b / d for b, d in zip(r["bnn"], r["det"])) for r in runs)
        rows.append(
            {
                "name": name,
                "params": sum(p.numel() for p in net.parameters()),
                "det_ms": 1e3 * statistics.median(statistics.median(r["det"]) for r in runs),
                "ms": 1e3 * statistics.median(statistics.median(r["bnn"]) for r in runs),
                "ratio": statistics.median(ratios),
                "ratio_min": ratios[0],
                "ratio_max": ratios[-1],
            }
        )
    return rows


def plain_torch_meanfield(x, y):
    net = mlp()
    names = [n for n, _ in net.named_parameters()]
    locs = [p.detach().clone().requires_grad_() for p in net.parameters()]
    rhos = [torch.full_like(p, math.log(math.expm1(1e-3))).requires_grad_() for p in net.parameters()]
    opt = torch.optim.Adam(locs + rhos, lr=1e-3)

    def step():
        opt.zero_grad()
        ws, kl = {}, 0.0
        for n, loc, rho in zip(names, locs, rhos):
            s = F.softplus(rho)
            ws[n] = loc + s * torch.randn_like(loc)
            kl = kl + (-torch.log(s) + 0.5 * (s * s + loc * loc) - 0.5).sum()
        out = torch.func.functional_call(net, ws, (x,))
        (F.cross_entropy(out, y) + kl / NUM_DATA).backward()
        opt.step()

    return step


def pyro_handwritten(x, y):
    import pyro
    import pyro.distributions as dist
    from pyro.infer import TraceMeanField_ELBO
    from pyro.infer.autoguide import AutoNormal
    from pyro.nn import PyroModule, PyroSample

    class BayesMLP(PyroModule):
        def __init__(self):
            super().__init__()
            self.layers = PyroModule[nn.ModuleList](
                [PyroModule[nn.Linear](a, b) for a, b in zip(DIMS[:-1], DIMS[1:])]
            )
            for layer, (a, b) in zip(self.layers, zip(DIMS[:-1], DIMS[1:])):
                layer.weight = PyroSample(dist.Normal(0.0, 1.0).expand([b, a]).to_event(2))
                layer.bias = PyroSample(dist.Normal(0.0, 1.0).expand([b]).to_event(1))

        def forward(self, x, y=None):
            h = x
            for i, layer in enumerate(self.layers):
                h = layer(h)
                if i < len(self.layers) - 1:
                    h = torch.relu(h)
            with pyro.plate("data", NUM_DATA, subsample_size=x.shape[0]):
                pyro.sample("obs", dist.Categorical(logits=h), obs=y)

    model = BayesMLP()
    guide = AutoNormal(model, init_scale=1e-3)
    guide(x, y)  # create the guide's parameters before building the optimizer
    elbo = TraceMeanField_ELBO()
    opt = torch.optim.Adam(guide.parameters(), lr=1e-3)

    def step():
        opt.zero_grad()
        elbo.differentiable_loss(model, guide, x, y).backward()
        opt.step()

    return step


def tyxe_bnn(x, y):
    import functools

    import pyro
    import pyro.distributions as dist
    import tyxe
    from pyro.infer import SVI, TraceMeanField_ELBO

    if not hasattr(pyro.util, "deep_getattr"):  # tyxe 0.0.2 uses a helper that pyro 1.9 removed
        pyro.util.deep_getattr = lambda obj, name: functools.reduce(getattr, name.split("."), obj)
        TYXE_NOTE.append("pyro.util.deep_getattr shim")
    pyro.clear_param_store()
    bnn = tyxe.VariationalBNN(
        mlp(),
        tyxe.priors.IIDPrior(dist.Normal(0.0, 1.0)),
        tyxe.likelihoods.Categorical(NUM_DATA),
        functools.partial(tyxe.guides.AutoNormal, init_scale=1e-3),
    )
    svi = SVI(bnn.model, bnn.guide, pyro.optim.Adam({"lr": 1e-3}), loss=TraceMeanField_ELBO())

    def step():
        svi.step(x, y)

    return step


def ivon_step(x, y):
    import ivon

    net = mlp()
    opt = ivon.IVON(net.parameters(), lr=0.1, ess=NUM_DATA)

    def step():
        with opt.sampled_params(train=True):
            opt.zero_grad()
            F.cross_entropy(net(x), y).backward()
        opt.step()

    return step


def profile_uncertlr(x, y) -> str:
    from torch.profiler import ProfilerActivity, profile

    step = uncertlr_bnn(x, y)
    for _ in range(20):
        step()
    with profile(activities=[ProfilerActivity.CPU]) as prof:
        for _ in range(50):
            step()
    return prof.key_averages().table(sort_by="self_cpu_time_total", row_limit=15)


def main(argv=None) -> int:
    p = base_parser(__doc__.splitlines()[0], timing=True)
    p.add_argument("--profile", action="store_true", help="print a torch.profiler table of uncertlr's step")
    p.add_argument("--repeats", type=int, default=None, help="independent measurements (default 3, quick 1)")
    p.add_argument(
        "--compile", action="store_true", help="add torch.compile(bnn.loss) (minutes of cold compile)"
    )
    p.add_argument("--variants", action="store_true", help="add the alternatives tried (see BENCHMARKS.md)")
    p.add_argument(
        "--fused",
        action="store_true",
        help="add both steps with torch's fused Adam kernel (Adam(fused=True))",
    )
    p.add_argument(
        "--zoo", action="store_true", help="add conv / recurrent / attention networks (BNN vs deterministic)"
    )
    p.add_argument(
        "--no-baselines", action="store_true", help="only deterministic and uncertlr (no Pyro, TyXe, IVON)"
    )
    args = p.parse_args(argv)
    clock = setup_clock(args)
    torch.manual_seed(0)
    x, y = torch.randn(BATCH, 784), torch.randint(0, 10, (BATCH,))

    # a second, identical deterministic step: its ratio is the noise floor of this run
    builders = {
        "deterministic": deterministic,
        "deterministic (A/A)": deterministic,
        "uncertlr": uncertlr_bnn,
        "uncertlr, independent noise": uncertlr_independent,
        "uncertlr, ATen noise": uncertlr_aten_noise,
        "uncertlr, eager sample/KL": uncertlr_eager_sample,
    }
    if args.compile:
        builders["deterministic compiled"] = deterministic_compiled
        builders["uncertlr compiled"] = uncertlr_compiled
    if args.variants:
        builders["uncertlr, one noise stream"] = uncertlr_one_stream
    if args.fused:
        builders["deterministic, fused Adam"] = deterministic_fused
        builders["uncertlr, fused Adam"] = uncertlr_fused
    if not args.no_baselines:
        builders.update(
            {
                "plain-torch MF": plain_torch_meanfield,
                "pyro (hand-written)": pyro_handwritten,
                "tyxe": tyxe_bnn,
                "ivon": ivon_step,
            }
        )
    fns, notes = {}, {}
    for name, build in builders.items():
        try:
            fns[name] = build(x, y)
            t0 = time.perf_counter()
            fns[name]()  # one step, so a baseline that fails at run time is skipped, not fatal
            if name.endswith("compiled"):
                notes[name] = f"cold compile {time.perf_counter() - t0:.0f} s"
                print(f"{name}: {notes[name]}")
        except Exception as e:  # noqa: BLE001 - optional baselines
            fns.pop(name, None)
            notes[name] = f"skipped: {type(e).__name__}: {e}"
            print(f"{name}: skipped ({type(e).__name__}: {e})")
    blocks, steps = (
        (5, 10) if args.quick else (7, 60)
    )  # long blocks: the first step after a switch runs cold-cache
    repeats = args.repeats or (1 if args.quick else 3)
    runs = [interleaved_medians(fns, blocks=blocks, steps=steps, clock=clock) for _ in range(repeats)]
    rows = []
    for name in builders:
        if name not in fns:
            rows.append({"name": name, "ms": None, "ratio": None, "note": notes[name]})
            continue
        ratios = sorted(r[name] / r["deterministic"] for r in runs)
        rows.append(
            {
                "name": name,
                "ms": 1e3 * sorted(r[name] for r in runs)[len(runs) // 2],
                "ratio": ratios[len(ratios) // 2],
                "ratio_min": ratios[0],
                "ratio_max": ratios[-1],
                "note": ", ".join(TYXE_NOTE) if name == "tyxe" else notes.get(name, ""),
            }
        )
    print_table(
        f"step time vs deterministic Adam, 784-400-400-10 MLP, batch {BATCH}, {torch.get_num_threads()} threads, "
        f"{'CPU' if args.cpu_time else 'wall'} clock "
        f"(median of {repeats} x {blocks} interleaved blocks of {steps} steps)",
        rows,
        [
            ("name", "method", "s"),
            ("ms", "ms/step", ".2f"),
            ("ratio", "ratio", ".2f"),
            ("ratio_min", "min", ".2f"),
            ("ratio_max", "max", ".2f"),
            ("note", "note", "s"),
        ],
    )
    ours = next(r for r in rows if r["name"] == "uncertlr")["ratio"]
    print(f"uncertlr BNN step / deterministic step = {ours:.2f} (target <= {TARGET})")
    ms = {r["name"]: r["ms"] for r in rows if r.get("ms")}
    for bnn, det, label, note in (
        ("uncertlr compiled", "deterministic compiled", "compiled", " (target <= 1)"),
        ("uncertlr, fused Adam", "deterministic, fused Adam", "fused Adam", ""),
    ):
        if bnn in ms and det in ms:  # each BNN step against its own baseline and against the eager BNN
            print(
                f"{label}: BNN / deterministic = {ms[bnn] / ms[det]:.2f}; "
                f"{label} BNN / the uncertlr row (eager, plain Adam) = {ms[bnn] / ms['uncertlr']:.2f}{note}"
            )
    # the zoo's steps cost 5-50x the MLP's: shorter blocks keep the run to minutes
    zoo_table = zoo_rows(blocks, max(3, steps // 6), repeats, clock) if args.zoo else []
    if zoo_table:
        print_table(
            f"uncertlr BNN step vs the same network's deterministic Adam step, batch 64 (target <= {ZOO_TARGET})",
            zoo_table,
            [
                ("name", "network", "s"),
                ("params", "parameters", ",d"),
                ("det_ms", "det ms/step", ".2f"),
                ("ms", "BNN ms/step", ".2f"),
                ("ratio", "ratio", ".3f"),
                ("ratio_min", "min", ".3f"),
                ("ratio_max", "max", ".3f"),
            ],
        )
    write_results(
        "step_time",
        rows,
        args.json,
        target=TARGET,
        batch=BATCH,
        dims=DIMS,
        blocks=blocks,
        steps=steps,
        repeats=repeats,
        clock="thread CPU time" if args.cpu_time else "wall",
        zoo=zoo_table,
        zoo_target=ZOO_TARGET,
    )
    if args.profile:
        print(profile_uncertlr(x, y))
    return 0


if __name__ == "__main__":
    sys.exit(main())
