"""Aggregation for ``benchmarks/shift.py``: summary rows with seed standard errors, the goal checks, the
ECE/NLL-vs-severity curves and figure, and a run folder with the report's shift section."""

from __future__ import annotations

from collections import defaultdict
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np

# --------------------------------------------------------------------------- aggregation


KEYS = (
    "accuracy",
    "nll",
    "brier",
    "ece",
    "ece_floor",
    "ece_p",
    "aurc",
    "auroc",
    "auroc_mi",
    "rmse",
    "coverage_90",
    "train_s",
    "predict_ms_per_1000",
)


#: the deterministic net and its temperature-scaled variants: the baseline every goal is measured against
BASELINES = ("deterministic", "deterministic+ts", "deterministic+ts-soften")
#: method-name suffixes of temperature scaling (the in-distribution goal's candidates)
TS_VARIANTS = ("+ts", "+ts-soften")


def _mean_se(values: list[float]) -> tuple[float, float | None]:
    a = np.asarray(values, dtype=np.float64)
    return float(a.mean()), (float(a.std(ddof=1) / np.sqrt(len(a))) if len(a) > 1 else None)


def summarise(
    rows: list[dict[str, Any]], group: Sequence[str] = ("condition", "method")
) -> list[dict[str, Any]]:
    """Mean over everything but the seed (severities, corruptions, folds) per seed, then mean and SE over seeds."""
    per: dict[tuple, dict[int, dict[str, list[float]]]] = defaultdict(
        lambda: defaultdict(lambda: defaultdict(list))
    )
    for r in rows:
        for k in KEYS:
            if r.get(k) is not None:
                per[tuple(r.get(g) for g in group)][r["seed"]][k].append(r[k])
    out = []
    for gkey, seeds in per.items():
        row: dict[str, Any] = dict(zip(group, gkey))
        for k in KEYS:
            vals = [float(np.mean(s[k])) for s in seeds.values() if s.get(k)]
            if vals:
                row[k], row[f"{k}_se"] = _mean_se(vals)
            elif k in ("accuracy", "nll", "ece", "auroc"):
                row[k] = None
        row["seeds"] = len(seeds)
        out.append(row)
    return out


def by_corruption(rows: list[dict[str, Any]], key: str = "ece") -> list[dict[str, Any]]:
    """One row per corrupted condition and method: ``key`` per corruption type (mean over severities per seed,
    then over seeds), as columns named after the types; with ``{type}_se`` the standard errors over seeds.

    Shows which kinds of shift a method handles and which it does not (a mean over types can hide both).
    """
    table: dict[tuple[str, str], dict[str, Any]] = {}
    for r in summarise(
        [r for r in rows if r["condition"].endswith("-corrupt")], ("condition", "method", "corruption")
    ):
        row = table.setdefault(
            (r["condition"], r["method"]), {"condition": r["condition"], "method": r["method"]}
        )
        row[r["corruption"]], row[f"{r['corruption']}_se"] = r.get(key), r.get(f"{key}_se")
    return list(table.values())


def task_of(condition: str) -> str:
    """The task of a condition name: ``"fsdd-cnn-loso"`` -> ``"fsdd-cnn"``, ``"digits-near-ood"`` -> ``"digits"``."""
    for suffix in ("-clean-cv", "-clean", "-corrupt", "-near-ood", "-far-ood", "-loso"):
        if condition.endswith(suffix):
            return condition[: -len(suffix)]
    return condition.split("-")[0]


def loso_goal(folds: list[dict[str, Any]]) -> dict[str, Any]:
    """Leave-one-speaker-out goal: the method that beats the deterministic net on NLL *and* ECE, each by more
    than the larger seed standard error, on the most folds (``folds``: ``summarise(rows, ("fold", "method"))``)."""
    methods = sorted({r["method"] for r in folds} - set(BASELINES))
    fold_tab: dict[str, dict[str, dict[str, Any]]] = defaultdict(dict)
    for r in folds:
        fold_tab[r["method"]][r["fold"]] = r
    det = fold_tab.get("deterministic", {})
    best = None
    for m in methods:
        wins = 0
        for fold, r in fold_tab.get(m, {}).items():
            d = det.get(fold)
            if d is None:
                continue
            se_n = max(r.get("nll_se") or 0.0, d.get("nll_se") or 0.0)
            se_e = max(r.get("ece_se") or 0.0, d.get("ece_se") or 0.0)
            wins += (d["nll"] - r["nll"] > se_n) and (d["ece"] - r["ece"] > se_e)
        if best is None or wins > best[1]:
            best = (m, wins)
    return {
        "best_method": best[0] if best else None,
        "folds_won": best[1] if best else 0,
        "folds": len(det),
        "met": bool(best and best[1] >= 4),
    }


def goals(summary: list[dict[str, Any]], folds: list[dict[str, Any]]) -> dict[str, Any]:
    """The issue's four goals, each with the numbers it was decided on."""
    s = {(r["condition"], r["method"]): r for r in summary}
    out: dict[str, Any] = {}
    methods = sorted({m for _, m in s if m not in BASELINES})
    if folds:
        out["loso"] = loso_goal(folds)
    det = s.get(("digits-near-ood", "deterministic"))
    if det:
        cands = [
            (max(r.get("auroc") or 0, r.get("auroc_mi") or 0), m)
            for (c, m), r in s.items()
            if c == "digits-near-ood"
        ]
        best_auc, best_m = max(cands)
        out["near_ood"] = {
            "deterministic_auroc_entropy": det["auroc"],
            "best_method": best_m,
            "best_auroc": best_auc,
            "met": best_auc >= det["auroc"] + 0.05,
        }
    for task in ("digits", "fsdd", "fsdd-cnn"):
        det_c, det_0 = s.get((f"{task}-corrupt", "deterministic")), s.get((f"{task}-clean", "deterministic"))
        if not det_c or not det_0:
            continue
        ok = [
            (s[(f"{task}-corrupt", m)]["ece"], m)
            for m in methods
            if (f"{task}-corrupt", m) in s and s[(f"{task}-clean", m)]["accuracy"] >= det_0["accuracy"] - 0.01
        ]
        ece, m = min(ok) if ok else (None, None)
        out[f"{task.replace('-', '_')}_corrupt"] = {
            "deterministic_ece": det_c["ece"],
            "best_method": m,
            "best_ece": ece,
            "met": ece is not None and ece <= 0.5 * det_c["ece"],
        }
    # in distribution with temperature scaling: on the test split, and cross-fitted over the whole data set
    for task in ("digits", "fsdd", "fsdd-cnn"):
        t = task.replace("-", "_")
        for cond, key in ((f"{task}-clean", f"{t}_clean_ts"), (f"{task}-clean-cv", f"{t}_clean_ts_cv")):
            ts = [(r["ece"], m) for (c, m), r in s.items() if c == cond and m.endswith(TS_VARIANTS)]
            if not ts:
                continue
            best = s[(cond, min(ts)[1])]
            out[key] = {
                "best_ece": min(ts)[0],
                "best_method": min(ts)[1],
                "met": min(ts)[0] <= 0.01,
                "all": {m: e for e, m in sorted(ts)},
                # what a perfectly calibrated model with the same confidences scores on this test set
                # (metrics.ece_consistency), and the mean p-value of the best method's ECE against it
                "calibrated_ece_floor": best.get("ece_floor"),
                "ece_p": best.get("ece_p"),
            }
    return out


def plot(rows: list[dict[str, Any]], path: Path) -> None:
    """ECE and NLL against severity (0 = clean), mean over corruption types and seeds, per method."""
    from uncertlr.diagnostics.plots import save_figure, shift_figure

    save_figure(shift_figure(severity_curves(rows)), path)
    print(f"wrote {path}")


def severity_curves(rows: list[dict[str, Any]]) -> dict[str, dict[str, dict[int, dict[str, float]]]]:
    """``{task: {method: {severity: {"ece", "nll", "accuracy"}}}}`` (severity 0 = the clean test set)."""
    acc: dict[tuple, list[dict[str, Any]]] = defaultdict(list)
    for r in rows:
        c = r["condition"]
        if c.endswith("-corrupt") or c.endswith("-clean"):
            acc[(c.rsplit("-", 1)[0], r["method"], r["severity"])].append(r)
    out: dict[str, dict[str, dict[int, dict[str, float]]]] = defaultdict(lambda: defaultdict(dict))
    for (task, m, sev), rs in sorted(acc.items()):
        out[task][m][int(sev)] = {k: float(np.mean([r[k] for r in rs])) for k in ("ece", "nll", "accuracy")}
    return {t: dict(v) for t, v in out.items()}


def check_can_add(run: Path) -> None:
    """Raise unless ``run`` is a run folder (it has a readable ``metrics.json``) without ``shift.json`` yet.

    Raises:
        FileNotFoundError / ValueError: not a run folder (the message names it).
        FileExistsError: it already holds ``shift.json``, which is never overwritten.
    """
    from uncertlr import runfolder

    runfolder.read_metrics(run)
    if (Path(run) / runfolder.SHIFT_FILE).exists():
        raise FileExistsError(
            f"{Path(run) / runfolder.SHIFT_FILE} already exists and is never overwritten: move it away, "
            "or write a new run folder with --run-dir"
        )


def add_to_run(run: Path, summary: list[dict[str, Any]], curves: dict[str, Any]) -> Path:
    """Add ``shift.json`` to an existing run folder (e.g. ``uncertlr demo``'s) and rebuild its report.

    The folder's lock is held while the file is written, so a process training in it is never raced;
    its other files are left as they are.
    """
    from uncertlr import runfolder
    from uncertlr.diagnostics import report

    check_can_add(run)
    with runfolder.lock_run_dir(run):
        check_can_add(run)  # again under the lock: another process may have written it meanwhile
        runfolder.write_shift(run, summary, curves)
    print(f"wrote {report(run, progress=False)}")
    return Path(run)


def write_run(root: Path, summary: list[dict[str, Any]], curves: dict[str, Any], seeds: list[int]) -> Path:
    """A run folder: ``metrics.json`` (each method on the first clean condition), ``shift.json``, the report."""
    from uncertlr import runfolder
    from uncertlr.diagnostics import report

    run = runfolder.new_run_dir(root, "shift")
    clean = next(
        (c for c in ("digits-clean", "fsdd-clean") if any(r["condition"] == c for r in summary)), None
    )
    models = {
        r["method"]: {k: r[k] for k in ("accuracy", "nll", "brier", "ece") if r.get(k) is not None}
        for r in summary
        if r["condition"] == clean
    }
    runfolder.write_metrics(
        run,
        {
            "task": f"shift benchmark ({clean or 'regression'} in the metrics table)",
            "seed": seeds[0],
            "config": {"seeds": seeds},
            "models": models,
        },
    )
    runfolder.write_shift(run, summary, curves)
    print(f"wrote {report(run, progress=False)}")
    return run
