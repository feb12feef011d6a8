"""The settings of ``uncertlr demo`` and ``uncertlr train``, checked in one place and importable without torch.

Every field is checked when a configuration is made — from the command line, from a saved
``config.json`` on ``--resume``, or in code — and a bad value raises ``ValueError`` naming the
field, so no run starts (or resumes) with settings it would fail on after training.
The command line (:mod:`uncertlr.app.cli`) builds its parser from these classes without
importing torch, so ``uncertlr --version`` and ``--help`` answer at once.

Example:
    >>> from uncertlr.app.config import TrainConfig
    >>> TrainConfig(epochs=3).epochs
    3
    >>> TrainConfig(batch_size=0)
    Traceback (most recent call last):
    ...
    ValueError: batch_size must be an integer >= 1; got 0
"""

from __future__ import annotations

import math
from dataclasses import dataclass, fields
from typing import Any

__all__ = [
    "DATASET_NAMES",
    "MAX_SEED",
    "MODULATOR_NAMES",
    "BNNConfig",
    "DemoConfig",
    "TrainConfig",
    "UserError",
    "check_float",
    "check_hidden",
    "check_int",
]

#: ``uncertlr train --data`` choices (``uncertlr.app.train.DATASETS`` maps each to its task).
DATASET_NAMES = ("digits",)
#: ``--modulator`` choices: none, G1 (global, batch entropy), P2 (per weight, |grad| x posterior std).
MODULATOR_NAMES = ("none", "g1", "p2")
#: Seeds seed numpy's legacy RNG and scikit-learn too, which take 32-bit seeds.
MAX_SEED = 2**32 - 1


class UserError(ValueError):
    """A mistake in what the user asked for (a path, a setting, a damaged file): the command line
    reports it as one line with exit status 2, never a traceback."""


def check_int(name: str, value: Any, low: int = 1, high: int | None = None) -> int:
    """``value`` as an int in ``[low, high]`` (never a bool or a float); ValueError naming ``name``."""
    if (
        isinstance(value, bool)
        or not isinstance(value, int)
        or value < low
        or (high is not None and value > high)
    ):
        span = f">= {low}" if high is None else f"in [{low}, {high}]"
        raise ValueError(f"{name} must be an integer {span}; got {value!r}")
    return value


def check_float(name: str, value: Any) -> float:
    """``value`` as a finite float > 0 (ints accepted, bools not); ValueError naming ``name``."""
    if (
        isinstance(value, bool)
        or not isinstance(value, (int, float))
        or not (math.isfinite(value) and value > 0)
    ):
        raise ValueError(f"{name} must be a finite number > 0; got {value!r}")
    return float(value)


def check_hidden(value: Any) -> tuple[int, ...]:
    """Hidden-layer widths: a sequence of integers >= 1 (``()`` is a linear model)."""
    if not isinstance(value, (tuple, list)):
        raise ValueError(f"hidden must be a list of layer widths; got {value!r}")
    return tuple(check_int(f"hidden[{i}]", w) for i, w in enumerate(value))


@dataclass(frozen=True)
class BNNConfig:
    """The Bayesian MLP's settings, shared by ``uncertlr demo`` and ``uncertlr train``."""

    seed: int = 0
    hidden: tuple[int, ...] = (128, 128)
    epochs: int = 150
    batch_size: int = 64
    lr: float = 1e-2
    kl_weight: float = 0.1
    prior_scale: float = 1.0
    init_scale: float = 1e-3
    num_samples: int = 64

    def __post_init__(self) -> None:
        check_int("seed", self.seed, 0, MAX_SEED)
        object.__setattr__(self, "hidden", check_hidden(self.hidden))
        for name in ("epochs", "batch_size", "num_samples"):
            check_int(name, getattr(self, name))
        for name in ("lr", "kl_weight", "prior_scale", "init_scale"):
            check_float(name, getattr(self, name))


@dataclass(frozen=True)
class DemoConfig(BNNConfig):
    """Settings of the digits demo (all recorded in ``metrics.json``)."""

    det_lr: float = 3e-3
    det_epochs: int = 60

    def __post_init__(self) -> None:
        super().__post_init__()
        check_float("det_lr", self.det_lr)
        check_int("det_epochs", self.det_epochs)


@dataclass(frozen=True)
class TrainConfig(BNNConfig):
    """Settings of a training run (saved as ``config.json`` in the run folder)."""

    data: str = "digits"
    checkpoint_every: int = 500
    max_consecutive_skips: int = 5
    modulator: str = "none"

    def __post_init__(self) -> None:
        super().__post_init__()
        if self.modulator not in MODULATOR_NAMES:
            raise ValueError(f"unknown modulator {self.modulator!r}; choose one of {list(MODULATOR_NAMES)}")
        if self.data not in DATASET_NAMES:
            raise ValueError(f"unknown dataset {self.data!r}; choose one of {list(DATASET_NAMES)}")
        check_int("checkpoint_every", self.checkpoint_every)
        check_int("max_consecutive_skips", self.max_consecutive_skips)

    #: Settings that do not change the training trajectory: ``--resume`` may override them.
    RESUMABLE_OVERRIDES = ("num_samples", "checkpoint_every", "max_consecutive_skips")

    @classmethod
    def from_dict(cls, d: Any) -> TrainConfig:
        """A configuration from ``config.json`` data; ValueError naming the unknown or bad field."""
        if not isinstance(d, dict):
            raise ValueError(f"must hold an object of settings; got {type(d).__name__}")
        known = {f.name for f in fields(cls)}
        unknown = set(d) - known
        if unknown:
            raise ValueError(f"unknown training settings {sorted(unknown)}")
        d = dict(d)
        if "hidden" in d:
            if not isinstance(d["hidden"], list):
                raise ValueError(f"hidden must be a list of layer widths; got {d['hidden']!r}")
            d["hidden"] = tuple(d["hidden"])
        return cls(**d)

    @property
    def model_name(self) -> str:
        return "bnn" if self.modulator == "none" else f"bnn+{self.modulator}"
