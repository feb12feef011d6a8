"""The standard-normal noise of every mean-field training step, drawn fast on the CPU and under ``torch.compile``.

A BNN step draws one normal number per random weight (478,410 for a 784-400-400-10 MLP). On
the CPU, ``torch.randn`` is single-threaded (one mt19937 stream, then Box-Muller), so the draw
alone cost a third of the whole step. Two faster ways, both exact in distribution:

* float32 draws of at least :data:`NATIVE_MIN_ELEMENTS` numbers, where the compiled kernels
  (:mod:`uncertlr.torch._native`) are vectorised (AVX2 or AVX-512): a counter-based generator,
  Philox4x32-10 (Salmon et al., 2011; cuRAND's and inductor's), then Box-Muller, in SIMD lanes
  and split over torch's threads — 3.3 times ATen's ``normal_`` on one AVX-512 core. The seed is
  drawn from torch's default generator, so ``torch.manual_seed`` still reproduces a run, and the
  numbers are a function of the seed alone (any thread count);
* otherwise, draws of at least :data:`PARALLEL_MIN_ELEMENTS` fill the two halves of the buffer
  from two generators with ``Tensor.normal_``: the calling thread one half, a helper thread the
  other, at the same time. Both generators are seeded from torch's default generator at every
  draw, so ``torch.manual_seed`` still reproduces a run (with any number of threads: with one, the
  halves are filled one after the other, giving the same numbers), and every element is an
  independent N(0, 1) draw of ATen's own sampler (exact in distribution, like ``torch.randn``; only
  the stream differs).

Which of the two runs depends on the machine (and ``UNCERTLR_NATIVE``), so the same seed gives other
numbers where the compiled sampler is not available; on one machine a seed reproduces its run.

Under ``torch.compile`` the draw is one opaque custom op (``uncertlr::standard_normal``):
inductor would otherwise replace ``torch.randn`` by its own counter-based generator, which on the
CPU runs one Philox + Box-Muller per element in scalar code, several times slower than ATen's.

Example:
    >>> import torch
    >>> eps = standard_normal(torch.zeros(3), 2)
    >>> tuple(eps.shape), eps.dtype
    ((2, 3), torch.float32)
"""

from __future__ import annotations

import os
import threading

import torch
from torch import Tensor

from uncertlr.torch import _native

__all__ = [
    "NATIVE_MIN_ELEMENTS",
    "PARALLEL_MIN_ELEMENTS",
    "SEED_BOUND",
    "seeded_standard_normal",
    "standard_normal",
]

#: CPU float32 draws of at least this many elements come from the compiled Philox sampler where it is
#: vectorised (``_native.kernels().fast_normal``); below, a ``ctypes`` call costs more than it saves.
NATIVE_MIN_ELEMENTS = 1 << 12

#: CPU draws (float32/float64) of at least this many elements come from two generators, one per
#: half (filled in parallel when torch has two or more threads, one after the other otherwise: the
#: numbers depend on the seed only, never on the thread count); smaller draws are ``torch.randn``.
PARALLEL_MIN_ELEMENTS = 1 << 17

#: Seeds of the noise generators are drawn from ``[0, SEED_BOUND)`` by torch's default generator.
SEED_BOUND = 1 << 62


class _HalfFiller:
    """Two seeded generators, one per half of a buffer, and a helper thread that fills the second half.

    The helper thread starts on the first parallel fill.
    """

    def __init__(self) -> None:
        self.pid = os.getpid()
        self.broken = False  # a draw was interrupted while the helper was busy: use a new one
        self.lock = threading.Lock()  # one draw at a time (callers on several threads take turns)
        self.generators = (torch.Generator(), torch.Generator())
        self._go, self._done = threading.Event(), threading.Event()
        self._job: Tensor | None = None
        self._error: BaseException | None = None
        self._thread: threading.Thread | None = None

    def _run(self) -> None:
        while True:
            self._go.wait()
            self._go.clear()
            try:
                self._job.normal_(generator=self.generators[1])  # type: ignore[union-attr]
            except BaseException as e:  # noqa: BLE001 - handed back to the caller
                self._error = e
            self._done.set()

    def fill(self, out: Tensor, *, parallel: bool, seeds: tuple[int, int] | None = None) -> Tensor:
        """Fill ``out`` with N(0, 1) draws: its first half from one generator, the second from the other.

        The generators are seeded with ``seeds``, or (None) with two seeds drawn by torch's default generator.
        """
        flat = out.view(-1)
        first, second = flat[: flat.numel() // 2], flat[flat.numel() // 2 :]
        with self.lock:
            if seeds is None:
                seeds = tuple(torch.randint(SEED_BOUND, (2,), dtype=torch.int64).tolist())  # type: ignore[assignment]
            for g, s in zip(self.generators, seeds):
                g.manual_seed(s)
            if not parallel:
                first.normal_(generator=self.generators[0])
                second.normal_(generator=self.generators[1])
                return out
            if self._thread is None:
                self._thread = threading.Thread(target=self._run, name="uncertlr-noise", daemon=True)
                self._thread.start()
            self._job, self._error = second, None
            self._done.clear()
            self._go.set()
            try:
                first.normal_(generator=self.generators[0])
                self._done.wait()
            except BaseException:  # e.g. KeyboardInterrupt: the helper may still be writing
                self.broken = True
                raise
            if self._error is not None:
                raise self._error
        return out


_FILLER: _HalfFiller | None = None


def _filler() -> _HalfFiller:
    global _FILLER
    if _FILLER is None or _FILLER.broken or _FILLER.pid != os.getpid():  # a forked child has no helper thread
        _FILLER = _HalfFiller()
    return _FILLER


@torch.library.custom_op(
    "uncertlr::standard_normal", mutates_args=(), tags=(torch.Tag.nondeterministic_seeded,)
)
def _standard_normal_op(like: Tensor, num: int) -> Tensor:
    """:func:`standard_normal` as one opaque op for ``torch.compile`` (``num == 0``: ``[P]``).

    Tagged as random, so the compiler never recomputes it in the backward or merges two calls.
    """
    return _draw(like, None if num == 0 else num)


@_standard_normal_op.register_fake
def _(like: Tensor, num: int) -> Tensor:
    return like.new_empty((like.numel(),) if num == 0 else (num, like.numel()))


def _compiled_sampler() -> _native.Kernels | None:
    """The compiled kernels where their sampler is vectorised (and so used), else None."""
    k = _native.kernels()
    return k if k is not None and k.fast_normal else None


def _native_sampler(like: Tensor, n: int) -> _native.Kernels | None:
    """The compiled sampler for a draw of ``n`` numbers like ``like``, where it applies."""
    if like.device.type != "cpu" or like.dtype != torch.float32 or n < NATIVE_MIN_ELEMENTS:
        return None
    return _compiled_sampler()


def _draw(like: Tensor, num: int | None) -> Tensor:
    shape = (like.numel(),) if num is None else (num, like.numel())
    if (k := _native_sampler(like, like.numel() * (num or 1))) is not None:
        out = torch.empty(shape, dtype=like.dtype)
        k.normal(out, int(torch.randint(SEED_BOUND, (1,), dtype=torch.int64)))
        return out
    if _parallel(like, like.numel() * (num or 1)):
        return _filler().fill(torch.empty(shape, dtype=like.dtype), parallel=torch.get_num_threads() > 1)
    return torch.randn(shape, dtype=like.dtype, device=like.device)


def _parallel(like: Tensor, n: int) -> bool:
    return (
        like.device.type == "cpu"
        and like.dtype in (torch.float32, torch.float64)
        and n >= PARALLEL_MIN_ELEMENTS
    )


def seeded_standard_normal(like: Tensor, seed: int) -> Tensor:
    """Independent N(0, 1) noise ``[P]`` like the flat ``like[P]``, a function of ``seed`` alone.

    The same ``seed`` gives the same numbers (on the same device), so a draw can be made again
    instead of kept; large CPU draws come from the compiled sampler or two generators as
    :func:`standard_normal`'s. Consumes nothing from torch's default generator.
    """
    n = like.numel()
    if (k := _native_sampler(like, n)) is not None:
        out = torch.empty(n, dtype=like.dtype)
        k.normal(out, seed)
        return out
    if _parallel(like, n):
        seeds = (seed, (seed * 0x9E3779B97F4A7C15 + 1) % SEED_BOUND)  # the second half's own seed
        return _filler().fill(
            torch.empty(n, dtype=like.dtype), parallel=torch.get_num_threads() > 1, seeds=seeds
        )
    g = torch.Generator(device=like.device)
    g.manual_seed(seed)
    return torch.randn(n, dtype=like.dtype, device=like.device, generator=g)


def standard_normal(like: Tensor, num: int | None) -> Tensor:
    """Independent N(0, 1) noise ``[num, P]`` (or ``[P]`` when ``num`` is None) like the flat ``like[P]``.

    Drawn from generators seeded by torch's default generator (``torch.manual_seed`` reproduces
    it), in eager mode and under ``torch.compile`` alike.
    """
    if torch.compiler.is_compiling():
        return _standard_normal_op(like, 0 if num is None else num)
    return _draw(like, num)
