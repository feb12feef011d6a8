"""Every Python block of README.md and docs/ runs, in order, as a reader would run it (Sybil).

Blocks of one file share a namespace. A hidden ``<!-- fixtures: NAME -->`` comment before a
block starts a fresh namespace holding the small data and objects the prose assumes the reader
already has (``MyNet``, ``train_set``, ``loader``, ``x``, ``y``, ...): :data:`FIXTURES` below.
Nothing crosses such a comment, so each section it starts is a test of its own (the README's
sections then run side by side under pytest-xdist). The blocks run in a temporary folder, so the
files they write (``ckpt.pt``, run folders) go there.
"""

from __future__ import annotations

import os
import warnings
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest

sybil = pytest.importorskip("sybil")
from sybil import Region, Sybil  # noqa: E402
from sybil.parsers.markdown import ClearNamespaceParser, PythonCodeBlockParser, SkipParser  # noqa: E402
from sybil.parsers.markdown.lexers import DirectiveInHTMLCommentLexer  # noqa: E402

ROOT = Path(__file__).resolve().parents[1]
DOCUMENTS = [ROOT / "README.md", *sorted((ROOT / "docs").rglob("*.md"))]


def _digits(n: int = 320):
    from uncertlr.data import load_digits

    s = load_digits(seed=0)
    return s.x_train[:n], s.y_train[:n], s.x_test[:100], s.y_test[:100]


def _torch() -> dict[str, Any]:
    import torch

    from uncertlr.torch import bayesian

    xtr, ytr, xte, yte = _digits()
    x, y = torch.from_numpy(xtr), torch.from_numpy(ytr)
    train_set = torch.utils.data.TensorDataset(x, y)

    class MyNet(torch.nn.Sequential):
        """The reader's network: an MLP for 8x8 digits."""

        def __init__(self):
            super().__init__(torch.nn.Linear(64, 32), torch.nn.ReLU(), torch.nn.Linear(32, 10))

    torch.manual_seed(0)
    net = MyNet()
    bnn = bayesian(net, num_data=len(x))
    return {
        "torch": torch,
        "MyNet": MyNet,
        "net": net,
        "train_set": train_set,
        "loader": torch.utils.data.DataLoader(train_set, batch_size=64, shuffle=True),
        "x": x,
        "y": y,
        "N": len(x),
        "x_train": x,
        "y_train": y,
        "x_val": torch.from_numpy(xte[:50]),
        "y_val": torch.from_numpy(yte[:50]),
        "trained_net": net,
        "x_test": torch.from_numpy(xte),
        "y_test": torch.from_numpy(yte),
        "bnn": bnn,
        "opt": torch.optim.Adam(bnn.parameters(), lr=1e-3),
    }


def _jax() -> dict[str, Any]:
    import jax

    from uncertlr import priors
    from uncertlr.jax import bayesian
    from uncertlr_models.flax_mlp import FlaxMLP

    xtr, ytr, xte, yte = _digits(100)  # small: the README runs NUTS on it
    net = FlaxMLP(hidden=(16,), out_features=10)
    variables = net.init(jax.random.key(0), xtr[:1])
    bnn = bayesian(net, params=variables, num_data=len(xtr), prior=priors.Normal(1.0))
    return {"x": xtr, "y": ytr, "x_test": xte, "y_test": yte, "bnn": bnn}


def _report() -> dict[str, Any]:
    """The torch fixtures plus a small run folder at the path the README names."""
    from uncertlr import runfolder

    ns = _torch()
    probs = ns["bnn"].predict(ns["x_test"], num_samples=4).numpy()
    run = Path("runs/demo-20261125-093221")
    run.mkdir(parents=True)
    runfolder.save_run(
        run,
        {"task": "digits", "models": {"bnn": runfolder.classification_summary(probs, ns["y_test"].numpy())}},
        predictions={"labels": ns["y_test"].numpy(), "bnn_test": probs},
        histories={"bnn": [{"step": 0, "loss": 1.0, "lr": 1e-3}]},
    )
    return ns


FIXTURES: dict[str, Callable[[], dict[str, Any]]] = {
    "torch": _torch,
    "jax": _jax,
    "report": _report,
    "none": dict,
}


class FixturesParser:
    """``<!-- fixtures: NAME -->``: clear the namespace and load :data:`FIXTURES` [NAME] into it."""

    def __init__(self) -> None:
        self.lexer = DirectiveInHTMLCommentLexer("fixtures")

    def __call__(self, document):
        for lexed in self.lexer(document):
            name = lexed.lexemes["arguments"].strip()
            if name not in FIXTURES:
                raise ValueError(f"{document.path}: unknown fixtures {name!r}; known: {sorted(FIXTURES)}")
            yield Region(lexed.start, lexed.end, name, self.evaluate)

    @staticmethod
    def evaluate(example) -> None:
        example.namespace.clear()
        example.namespace.update(FIXTURES[example.parsed]())


PARSERS = [FixturesParser(), ClearNamespaceParser(), SkipParser(), PythonCodeBlockParser()]


def _sections(path: Path) -> list[tuple[int, int]]:
    """``path`` cut at its ``fixtures`` comments: (start, end) character offsets of each part with code.

    Each ``fixtures`` comment starts a fresh namespace, so the parts are independent and run as
    separate tests (xdist spreads them over its workers); the blocks before the first comment, if
    any, form a part of their own. A document without Python blocks has no part.
    """
    examples = list(Sybil(PARSERS).parse(path))
    starts = sorted({0, *(e.start for e in examples if e.region.evaluator is FixturesParser.evaluate)})
    sections = zip(starts, [*starts[1:], None])
    return [(a, b) for a, b in sections if any(a <= e.start and (b is None or e.start < b) for e in examples)]


def _line(path: Path, offset: int) -> int:
    return path.read_text().count("\n", 0, offset) + 1


SECTIONS = [(path, *section) for path in DOCUMENTS for section in _sections(path)]


def test_documents_have_code():
    assert (ROOT / "docs" / "index.md").is_file()
    blocks = {p.name: sum(1 for _ in Sybil(PARSERS).parse(p)) for p in DOCUMENTS}
    assert blocks["README.md"] >= 7
    assert sum(1 for path, *_ in SECTIONS if path.name == "README.md") >= 6  # one test per section


@pytest.mark.slow
@pytest.mark.parametrize(
    "path, start, end",
    SECTIONS,
    ids=[f"{p.relative_to(ROOT)}:{_line(p, start)}" for p, start, _ in SECTIONS],
)
def test_code_blocks_run(path, start, end, tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    document = Sybil(PARSERS).parse(path)
    examples = [e for e in document if e.start >= start and (end is None or e.start < end)]
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        os.environ.setdefault("MPLBACKEND", "Agg")
        for example in examples:
            try:
                example.evaluate()
            except Exception as exc:
                raise AssertionError(
                    f"{path.name}, line {example.line}: {type(exc).__name__}: {exc}"
                ) from exc
