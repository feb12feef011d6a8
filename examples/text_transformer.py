"""A Hugging Face-style Transformer text classifier made Bayesian: dict batches, an attention mask, ``.logits``.

``uncertlr_models.TinyTextTransformer`` has the calling convention of a Hugging Face
``AutoModelForSequenceClassification`` — ``forward(input_ids, attention_mask)`` returning an
output object with ``.logits`` — and is wrapped the way such a model is::

    bnn = bayesian(net, num_data=N, inputs=("input_ids", "attention_mask"), output="logits")
    terms = bnn.elbo(batch, batch["labels"])        # batch: a dict, as a tokenizer's collator gives

The task is synthetic and local (nothing downloaded): padded token sequences of length 4-16
over a 30-token vocabulary; tokens 1-9 are "positive", 10-19 "negative", 20-29 neutral, and
the label says which kind is in the majority. Out of distribution: sequences of neutral tokens
only, which carry no evidence either way. The deterministic net and the BNN are trained by the
same loop; the script prints the summary table and writes a run folder (``metrics.json``,
``predictions.npz``, ``history.json``, figures).

Usage::

    python examples/text_transformer.py            # ~1 min on 2 cores
    python examples/text_transformer.py --quick    # a few seconds
"""

from __future__ import annotations

import argparse
import sys
import time
import warnings
from collections.abc import Sequence
from pathlib import Path

import torch
import torch.nn.functional as F

from uncertlr import runfolder
from uncertlr._progress import progress_bar, progress_task
from uncertlr.app.pipeline import Results, results_table, save
from uncertlr.torch import bayesian
from uncertlr_models import TinyTextTransformer

VOCAB, MAX_LEN = 30, 16
# vmap over weight samples falls back to a loop for fused attention kernels: slower, still correct
warnings.filterwarnings("ignore", "There is a performance drop", UserWarning)


def make_texts(n: int, *, seed: int, neutral_only: bool = False) -> dict[str, torch.Tensor]:
    """``{"input_ids" [n, 16], "attention_mask" [n, 16], "labels" [n]}``; odd counts of evidence, no ties."""
    g = torch.Generator().manual_seed(seed)
    lengths = torch.randint(4, MAX_LEN + 1, (n,), generator=g)
    ids = torch.randint(20, 30, (n, MAX_LEN), generator=g)  # neutral filler
    labels = torch.randint(0, 2, (n,), generator=g)
    if not neutral_only:
        for i in range(n):
            k = (
                int(torch.randint(1, int(lengths[i]) + 1, (1,), generator=g)) | 1
            )  # an odd number of evidence tokens
            k = min(k, int(lengths[i]) - (1 - int(lengths[i]) % 2))
            pos = torch.randperm(int(lengths[i]), generator=g)[:k]
            majority = k // 2 + 1
            kinds = torch.cat([torch.ones(majority), torch.zeros(k - majority)])
            kinds = kinds if labels[i] == 1 else 1 - kinds
            ids[i, pos] = torch.where(
                kinds.bool(),
                torch.randint(1, 10, (k,), generator=g),
                torch.randint(10, 20, (k,), generator=g),
            )
    mask = (torch.arange(MAX_LEN)[None] < lengths[:, None]).long()
    return {"input_ids": ids * mask, "attention_mask": mask, "labels": labels}


def rows(batch: dict[str, torch.Tensor], idx: torch.Tensor) -> dict[str, torch.Tensor]:
    return {k: v[idx] for k, v in batch.items()}


def train(loss_fn, params, data, *, epochs: int, lr: float, seed: int, progress, name: str) -> list[dict]:
    """Adam with a cosine schedule over minibatches of 64; the loop a user would write."""
    opt = torch.optim.Adam(params, lr=lr)
    n = len(data["labels"])
    steps = epochs * -(-n // 64)
    sched = torch.optim.lr_scheduler.CosineAnnealingLR(opt, steps)
    g, history = torch.Generator().manual_seed(seed), []
    with progress_task(progress, name, total=steps) as advance:
        for _ in range(epochs):
            for idx in torch.randperm(n, generator=g).split(64):
                batch = rows(data, idx)
                opt.zero_grad()
                loss = loss_fn(batch)
                loss.backward()
                opt.step()
                sched.step()
                history.append(
                    {"step": len(history), "loss": float(loss.detach()), "lr": sched.get_last_lr()[0]}
                )
                advance(info=f"loss {float(loss.detach()):.3f}")
    return history


def main(argv: Sequence[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--quick", action="store_true", help="fewer texts and epochs (a smoke run)")
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--out", default="runs", help="folder for the run folder")
    args = ap.parse_args(argv)
    from rich.console import Console

    console = Console()
    n_train, epochs = (256, 3) if args.quick else (1500, 20)
    train_set, test_set = make_texts(n_train, seed=args.seed), make_texts(500, seed=args.seed + 1)
    ood = make_texts(500, seed=args.seed + 2, neutral_only=True)
    run = runfolder.new_run_dir(args.out, "text")
    inputs = ("input_ids", "attention_mask")
    results = Results(ood="neutral-only texts (no evidence)")
    results.predictions["labels"] = test_set["labels"].numpy()

    with progress_bar() as bar:
        torch.manual_seed(args.seed)
        net = TinyTextTransformer(VOCAB, 2, max_len=MAX_LEN)
        t0 = time.perf_counter()
        hist = train(
            lambda b: F.cross_entropy(net(b["input_ids"], b["attention_mask"]).logits, b["labels"]),
            net.parameters(), train_set, epochs=epochs, lr=3e-3, seed=args.seed, progress=bar, name="deterministic",
        )  # fmt: skip
        net.eval()
        with torch.no_grad():
            det = {k: torch.softmax(net(d["input_ids"], d["attention_mask"]).logits, -1)[None] for k, d in
                   (("test", test_set), ("ood", ood))}  # fmt: skip
        results.results["deterministic"] = {
            **runfolder.classification_summary(det["test"], test_set["labels"], det["ood"]),
            "seconds": time.perf_counter() - t0,
        }
        results.histories["deterministic"] = hist

        torch.manual_seed(args.seed)
        bnn = bayesian(
            TinyTextTransformer(VOCAB, 2, max_len=MAX_LEN),
            num_data=n_train,
            kl_weight=0.1,
            inputs=inputs,
            output="logits",
        )
        t0 = time.perf_counter()
        hist = train(
            lambda b: bnn.loss(b, b["labels"]), bnn.parameters(), train_set,
            epochs=epochs, lr=1e-2, seed=args.seed, progress=bar, name="bnn",
        )  # fmt: skip
        probs = {k: bnn.predict(d, num_samples=32) for k, d in (("test", test_set), ("ood", ood))}
        results.results["bnn"] = {
            **runfolder.classification_summary(probs["test"], test_set["labels"], probs["ood"]),
            "seconds": time.perf_counter() - t0,
        }
        results.histories["bnn"] = hist
    for name, p in (("deterministic", det), ("bnn", probs)):
        results.predictions[f"{name}_test"] = p["test"].numpy()
        results.predictions[f"{name}_ood"] = p["ood"].numpy()
    console.print(
        results_table(results.results, title="synthetic texts: test set and neutral-only OOD texts")
    )
    save(
        results,
        run,
        doc={"task": "synthetic-text", "seed": args.seed, "config": vars(args), "ood": results.ood},
    )
    console.print(f"run folder: [bold]{Path(run)}[/]")
    return 0


if __name__ == "__main__":
    sys.exit(main())
