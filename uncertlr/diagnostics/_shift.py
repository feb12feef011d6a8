"""The report's "Under distribution shift" section: ECE/NLL against corruption severity and a summary table.

Drawn when the run folder holds ``shift.json`` (:func:`uncertlr.runfolder.write_shift`, written by
``benchmarks/shift.py --run-dir``); self-contained, so the report shows a note in its place when
the file is absent or unreadable.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from uncertlr.diagnostics import _html
from uncertlr.diagnostics.plots import figure_png, shift_figure
from uncertlr.runfolder import read_shift

__all__ = ["shift_section"]

_COLUMNS = (("accuracy", "accuracy"), ("nll", "NLL"), ("ece", "ECE"), ("auroc", "OOD AUROC"))


def _fmt(v: Any) -> str:
    return "–" if not isinstance(v, (int, float)) else f"{v:.3f}"


def shift_section(run: Path) -> str:
    """HTML of the section for ``run`` (a note when the run has no shift results; never raises)."""
    try:
        doc = read_shift(run)
    except (ValueError, OSError) as exc:
        return _note(f"shift.json could not be read: {exc}")
    if doc is None:
        return _note("No shift results in this run folder (benchmarks/shift.py --run-dir writes them).")
    parts = []
    try:
        if doc["curves"]:
            png = figure_png(shift_figure(doc["curves"]))
            parts.append(_html.image(png, "ECE and NLL against corruption severity"))
            parts.append(
                _note(
                    "Mean over corruption types and seeds; severity 0 is the clean test set; "
                    "dashed: after temperature scaling."
                )
            )
    except Exception as exc:  # noqa: BLE001 - a broken figure must not take the section down
        parts.append(_note(f"The severity figure failed: {type(exc).__name__}: {exc}"))
    rows = [r for r in doc["summary"] if isinstance(r, dict)]
    body = [
        [str(r.get("condition", "")), str(r.get("method", ""))] + [_fmt(r.get(k)) for k, _ in _COLUMNS]
        for r in rows
    ]
    parts.append(_html.table(["condition", "method", *(h for _, h in _COLUMNS)], body))
    parts.append(
        _note(
            "Means over seeds, severities and folds; OOD AUROC (predictive entropy) only for OOD conditions."
        )
    )
    return "".join(parts)


def _note(text: str) -> str:
    return f'<p class="note">{_html.esc(text)}</p>'
