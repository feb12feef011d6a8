"""Compiled CPU kernels for the built-in per-parameter rules, built on first use and cached.

:class:`~uncertlr.torch._fused.FusedRule`'s host path (a CPU, ``renormalize``) makes about ten
memory-bound passes over the flat posterior each step in eager PyTorch. The three kernels in
``_native.c`` make the same factors in three: the measure with its segment sums (and, for P2, the
new gradient EMA), the power and clamp with the sums, minima and maxima, and the renormalisation.
They are plain C (no torch headers), compiled once with the system's C compiler (``$CC``, else
``cc``, ``gcc`` or ``clang``; about 0.3 s) into the cache folder (``$UNCERTLR_CACHE/native``, see
:func:`uncertlr._io.cache_dir`), keyed by the source, the compiler, the flags and the CPU, and
loaded with :mod:`ctypes`. With ``-fopenmp`` they share torch's OpenMP threads (on Linux torch
loads ``libgomp.so.1`` before this library does).

The same library holds the mean-field step's sample and KL (one pass forward, one backward, where
eager PyTorch makes five and four; :class:`~uncertlr.torch._meanfield.MeanFieldNormal`) and its
noise sampler (:mod:`uncertlr.torch._noise`): Philox4x32-10 and Box-Muller in float32, vectorised
(AVX-512 intrinsics for Philox, the compiler's vectors elsewhere) and split over the threads.
``Kernels.fast_normal`` says whether this build is one (AVX2 or AVX-512) where the sampler was
measured faster than ATen's ``normal_``. And one small function for the global modulator's signal:
the batch's mean predictive entropy from one draw's logits (:func:`uncertlr.torch.batch_entropy`) in
one call, where the eager formula's six small ops cost several times more right after a training
step has evicted their code from the caches.

Nothing depends on them: without a compiler, with ``UNCERTLR_NATIVE=0``, when the build fails, or
while ``torch.compile`` traces, the eager path runs (``tests/torch/test_fused.py`` holds both to the
reference rules). A build without OpenMP runs on one thread, so it is used only while torch does
too. :func:`status` says which applies.

Example:
    >>> from uncertlr.torch import _native
    >>> _native.status().split(":")[0] in {"loaded", "disabled", "unavailable"}
    True
"""

from __future__ import annotations

import ctypes
import hashlib
import os
import platform
import shutil
import subprocess
import tempfile
import threading
from pathlib import Path

import torch
from torch import Tensor

from uncertlr._io import atomic_write, cache_dir

__all__ = ["ENV", "Kernels", "kernels", "status"]

#: ``UNCERTLR_NATIVE=0`` turns the compiled kernels off (the eager path runs).
ENV = "UNCERTLR_NATIVE"
#: The ABI ``_native.c`` reports; a cached library with another is rebuilt.
ABI = 7
#: Measures: P2's ``|ĝ| σ``, P1's ``σ``, P3's ``σ²`` (the ``kind`` argument of ``uncertlr_measure_*``).
MEASURES = {"grad_sigma": 0, "sigma": 1, "variance": 2}
#: Powers the factor kernel computes itself (others: ``pow_`` first, then ``IDENTITY``).
POWERS = {-0.5: 1, 0.5: 2, -1.0: 3, 2.0: 4, 1.0: 0}
IDENTITY = 0
#: Compiler flags tried in turn; the first that builds wins (``parallel``: built with OpenMP).
FLAG_SETS = (
    (("-march=native", "-fopenmp"), True),
    (("-fopenmp",), True),
    (("-fopenmp-simd",), False),
)
_BASE_FLAGS = (
    "-O3",
    "-fPIC",
    "-shared",
    "-fno-math-errno",
    "-fno-trapping-math",  # lets the compiler vectorise the sampler's branch-free selects (results unchanged)
    "-std=c11",
    "-Werror=implicit-function-declaration",
)
_SOURCE = Path(__file__).with_name("_native.c")

_P = ctypes.c_void_p
_I64 = ctypes.c_int64


class Kernels:
    """The loaded library: ``measure``, ``factors`` and ``scale`` over flat contiguous CPU tensors,
    ``sample`` and ``sample_grad`` (the mean-field step), ``entropy`` (the modulator's batch signal)
    and ``normal``, the noise sampler.

    Every argument tensor is contiguous, on the CPU and (where floating) of ``dtype``
    float32 or float64; ``sizes`` int64, ``op`` int8, ``lo``/``hi``/``c``/``sums``/``mins``/``maxs``
    float64. The caller (``FusedRule``) checks that; these methods only pass pointers.
    """

    def __init__(self, lib: ctypes.CDLL, path: Path, parallel: bool):
        self.path, self.parallel = path, parallel
        self._pid = os.getpid()
        self._fns = {}
        self._meanfield = {}
        for dt, suf, ct in ((torch.float32, "f32", ctypes.c_float), (torch.float64, "f64", ctypes.c_double)):
            m = getattr(lib, f"uncertlr_measure_{suf}")
            m.argtypes = [ctypes.c_int, _I64, _P, ctypes.c_int, _P, _P, _P, ct, _P, _P, _P]
            f = getattr(lib, f"uncertlr_factors_{suf}")
            f.argtypes = [ctypes.c_int, _I64, _P, _P, ctypes.c_int, _P, _P, _P, _P, _P, _P]
            s = getattr(lib, f"uncertlr_scale_{suf}")
            s.argtypes = [ctypes.c_int, _I64, _P, _P, _P, _P]
            a = getattr(lib, f"uncertlr_apply_{suf}")
            a.argtypes = [ctypes.c_int, _I64, _P, _P, _P, _P, _P, _P, ctypes.c_int]
            q = getattr(lib, f"uncertlr_sumsq_{suf}")
            q.argtypes = [ctypes.c_int, _I64, _P, _P, _P]
            n = getattr(lib, f"uncertlr_noise_measure_{suf}")
            # threads, nseg, sizes, kind, upd, inv_corr, w_noise, mean, sq, mean_out, sq_out, ema, g, w, ema_out,
            # raw, sums
            n.argtypes = [ctypes.c_int, _I64, _P, ctypes.c_int, _P, _P, ct, *[_P] * 6, ct, *[_P] * 3]
            smp = getattr(lib, f"uncertlr_sample_{suf}")
            # threads, n, loc, log_scale, scale, eps, prior_loc, sign, w, diff, sums
            smp.argtypes = [ctypes.c_int, _I64, *[_P] * 5, ct, _P, _P, _P]
            grd = getattr(lib, f"uncertlr_sample_grad_{suf}")
            # threads, n, g, eps, scale, diff, k, gkl, sign, d_loc, d_log_scale
            grd.argtypes = [ctypes.c_int, _I64, *[_P] * 4, ct, ct, ct, _P, _P]
            for fn in (m, f, s, q, n, a, smp, grd):
                fn.restype = None
            self._fns[dt] = (m, f, s, q, n, a)
            self._meanfield[dt] = (smp, grd)
        self._entropy = {}
        for dt, suf in ((torch.float32, "f32"), (torch.float64, "f64")):
            ent = getattr(lib, f"uncertlr_entropy_{suf}")
            ent.argtypes = [_I64, _I64, _P, _P]
            ent.restype = ctypes.c_int
            self._entropy[dt] = ent
        self._snapshot = lib.uncertlr_snapshot
        self._snapshot.argtypes = [ctypes.c_int, _I64, _P, _P]
        self._snapshot.restype = None
        self._normal = lib.uncertlr_normal_f32
        self._normal.argtypes = [ctypes.c_int, _I64, ctypes.c_uint64, _P]
        self._normal.restype = None
        self._philox = lib.uncertlr_philox4x32_10
        self._philox.argtypes = [_P, _P, _P]
        self._philox.restype = None
        #: Whether the noise sampler is vectorised (AVX2 or AVX-512), i.e. faster than ATen's ``normal_``.
        self.fast_normal = bool(lib.uncertlr_normal_fast())

    def usable(self) -> bool:
        """Whether to use the kernels now: always when built with OpenMP, else only while torch uses one thread."""
        return self.parallel or torch.get_num_threads() == 1

    def _threads(self) -> int:
        # a forked child inherits libgomp's pool without its threads: an OpenMP region there would hang
        # (as torch's own parallel kernels do), so it runs on its one thread
        return max(1, torch.get_num_threads()) if os.getpid() == self._pid else 1

    def measure(
        self,
        kind: str,
        sizes: Tensor,
        ema: Tensor | None,
        g: Tensor | None,
        sigma: Tensor,
        w: float,
        ema_out: Tensor | None,
        raw: Tensor,
        sums: Tensor,
    ) -> None:
        """``raw`` ← the measure (``ema_out`` ← the new EMA for P2); ``sums[s]`` ← each segment's sum of ``raw``."""
        fn = self._fns[raw.dtype][0]
        ptr = lambda t: t.data_ptr() if t is not None else None  # noqa: E731
        fn(
            self._threads(),
            sizes.numel(),
            sizes.data_ptr(),
            MEASURES[kind],
            ptr(ema),
            ptr(g),
            sigma.data_ptr(),
            w,
            ptr(ema_out),
            raw.data_ptr(),
            sums.data_ptr(),
        )

    def factors(
        self,
        sizes: Tensor,
        op: Tensor,
        power: int,
        lo: Tensor,
        hi: Tensor,
        x: Tensor,
        sums: Tensor,
        mins: Tensor,
        maxs: Tensor,
    ) -> None:
        """Per segment: ``op`` 1 clamps ``power(x)`` to ``[lo, hi]`` in place (sums, minima, maxima
        written), 2 fills 1, 0 leaves it alone."""
        fn = self._fns[x.dtype][1]
        fn(
            self._threads(),
            sizes.numel(),
            sizes.data_ptr(),
            op.data_ptr(),
            power,
            lo.data_ptr(),
            hi.data_ptr(),
            x.data_ptr(),
            sums.data_ptr(),
            mins.data_ptr(),
            maxs.data_ptr(),
        )

    def sumsq(self, sizes: Tensor, g: Tensor, sums: Tensor) -> None:
        """``sums[s]`` ← each segment's sum of ``g²`` (the squares in ``g``'s dtype, so one that overflows is inf)."""
        fn = self._fns[g.dtype][3]
        fn(self._threads(), sizes.numel(), sizes.data_ptr(), g.data_ptr(), sums.data_ptr())

    def noise_measure(
        self,
        kind: str,
        sizes: Tensor,
        upd: Tensor,
        inv_corr: Tensor,
        w_noise: float,
        moments: tuple[Tensor, Tensor],
        moments_out: tuple[Tensor, Tensor],
        ema: Tensor | None,
        g: Tensor,
        w: float,
        ema_out: Tensor | None,
        raw: Tensor,
        sums: Tensor,
    ) -> None:
        """The gradient-noise moments (toward ``g`` and ``g²`` where ``upd[s]``, else copied) and the
        measure from the std they give, ``sqrt(max(sq − mean² inv_corr, 0))``, with its segment sums."""
        fn = self._fns[raw.dtype][4]
        fn(
            self._threads(),
            sizes.numel(),
            sizes.data_ptr(),
            MEASURES[kind],
            upd.data_ptr(),
            inv_corr.data_ptr(),
            w_noise,
            moments[0].data_ptr(),
            moments[1].data_ptr(),
            moments_out[0].data_ptr(),
            moments_out[1].data_ptr(),
            ema.data_ptr() if ema is not None else None,
            g.data_ptr(),
            w,
            ema_out.data_ptr() if ema_out is not None else None,
            raw.data_ptr(),
            sums.data_ptr(),
        )

    def sample(
        self,
        loc: Tensor,
        log_scale: Tensor,
        scale: Tensor,
        eps: Tensor,
        prior_loc: Tensor | None,
        sign: float,
        w: Tensor,
        diff: Tensor | None,
        sums: Tensor,
    ) -> None:
        """The mean-field forward: ``w ← loc + sign scale eps``, ``diff ← loc − prior_loc`` (when given) and
        ``sums`` (float64 ``[3]``) ← the sums of ``log_scale``, ``scale²`` and ``diff²``."""
        fn = self._meanfield[w.dtype][0]
        fn(
            self._threads(),
            w.numel(),
            loc.data_ptr(),
            log_scale.data_ptr(),
            scale.data_ptr(),
            eps.data_ptr(),
            prior_loc.data_ptr() if prior_loc is not None else None,
            sign,
            w.data_ptr(),
            diff.data_ptr() if diff is not None else None,
            sums.data_ptr(),
        )

    def sample_grad(
        self,
        g: Tensor,
        eps: Tensor,
        scale: Tensor,
        diff: Tensor,
        k: float,
        grad_kl: float,
        sign: float,
        d_loc: Tensor,
        d_log_scale: Tensor,
    ) -> None:
        """The mean-field backward: ``d_loc ← g + diff k``, ``d_log_scale ← sign scale (g eps + scale sign k) − grad_kl``."""
        fn = self._meanfield[g.dtype][1]
        fn(
            self._threads(),
            g.numel(),
            g.data_ptr(),
            eps.data_ptr(),
            scale.data_ptr(),
            diff.data_ptr(),
            k,
            grad_kl,
            sign,
            d_loc.data_ptr(),
            d_log_scale.data_ptr(),
        )

    def entropy(self, logits: Tensor, out: Tensor) -> bool:
        """``out`` (0-d, the logits' dtype) ← the mean over the rows of ``logits[rows, C]`` (contiguous) of
        the softmax entropy, computed in double; ``False`` (``out`` untouched) when a logit is not finite."""
        c = logits.shape[-1]
        return bool(self._entropy[logits.dtype](logits.numel() // c, c, logits.data_ptr(), out.data_ptr()))

    def snapshot(self, src: Tensor, dst: Tensor) -> None:
        """``dst ← src`` (contiguous, same dtype and size) with stores that bypass the cache where aligned."""
        self._snapshot(self._threads(), src.numel() * src.element_size(), src.data_ptr(), dst.data_ptr())

    def normal(self, out: Tensor, seed: int) -> None:
        """``out`` (flat contiguous float32 CPU) ← the first ``out.numel()`` N(0, 1) numbers of ``seed``'s
        Philox4x32-10 + Box-Muller sequence (the same for any thread count)."""
        self._normal(self._threads(), out.numel(), seed, out.data_ptr())

    def philox(self, counter: Tensor, key: Tensor) -> Tensor:
        """One Philox4x32-10 block: four words from ``counter`` (4 words) and ``key`` (2), int64 tensors of
        the words' values (tests)."""
        words = lambda t: (t.to(torch.int64) - (t >= 2**31).to(torch.int64) * 2**32).to(torch.int32)  # noqa: E731
        c, k = words(counter).contiguous(), words(key).contiguous()  # the same 32 bits, signed
        out = torch.empty(4, dtype=torch.int32)
        self._philox(c.data_ptr(), k.data_ptr(), out.data_ptr())
        return out.to(torch.int64) & 0xFFFFFFFF

    def scale(self, sizes: Tensor, op: Tensor, c: Tensor, x: Tensor) -> None:
        """``x[segment s] *= c[s]`` where ``op[s] == 1``."""
        fn = self._fns[x.dtype][2]
        fn(self._threads(), sizes.numel(), sizes.data_ptr(), op.data_ptr(), c.data_ptr(), x.data_ptr())

    def apply(
        self,
        sizes: Tensor,
        op: Tensor,
        c: Tensor,
        x: Tensor,
        before: Tensor,
        theta: Tensor,
        write_x: bool = True,
    ) -> None:
        """``theta ← lerp(before, theta, f)`` (``torch.lerp``'s formula) with ``f`` = ``x`` scaled as :meth:`scale`
        would; ``write_x``: write ``f`` back to ``x`` too (else ``x`` is left as it was)."""
        fn = self._fns[x.dtype][5]
        fn(
            self._threads(),
            sizes.numel(),
            sizes.data_ptr(),
            op.data_ptr(),
            c.data_ptr(),
            x.data_ptr(),
            before.data_ptr(),
            theta.data_ptr(),
            int(write_x),
        )


_lock = threading.Lock()
_loaded: dict[str, Kernels | str] = {}  # "kernels": the library, or "reason": why there is none


def _compiler() -> str | None:
    for name in (os.environ.get("CC", "").split(" ")[0], "cc", "gcc", "clang"):
        if name and (path := shutil.which(name)):
            return path
    return None


def _cpu() -> str:
    """What ``-march=native`` depends on: the CPU's model and flags (Linux), else the machine type."""
    try:
        lines = Path("/proc/cpuinfo").read_text().splitlines()
    except OSError:
        return platform.machine()
    keep = [ln for ln in lines if ln.startswith(("model name", "flags", "Features"))]
    return platform.machine() + "\n" + "\n".join(dict.fromkeys(keep))


def _toolchain(cc: str) -> bytes:
    """What every build of the library depends on besides its flags: the source, the compiler and its
    version, the CPU and torch."""
    try:
        version = subprocess.run([cc, "--version"], capture_output=True, text=True, timeout=30).stdout
    except (OSError, subprocess.SubprocessError):
        version = ""
    parts = (_SOURCE.read_bytes(), str(ABI).encode(), cc.encode(), version.encode(), _cpu().encode())
    return b"\0".join((*parts, torch.__version__.encode()))


def _key(toolchain: bytes, flags: tuple[str, ...]) -> str:
    return hashlib.sha256(toolchain + b"\0" + " ".join(flags).encode()).hexdigest()[:20]


def _open(path: Path, parallel: bool) -> Kernels:
    lib = ctypes.CDLL(str(path))
    lib.uncertlr_native_abi.restype = ctypes.c_int
    if lib.uncertlr_native_abi() != ABI:
        raise OSError(f"{path}: ABI {lib.uncertlr_native_abi()}, expected {ABI}")
    return Kernels(lib, path, parallel)


def _build(cc: str, folder: Path) -> Kernels | str:
    """Build (or find in ``folder``) the library with the first flag set that compiles and loads."""
    errors = []
    toolchain = _toolchain(cc)
    for extra, parallel in FLAG_SETS:
        flags = _BASE_FLAGS + extra
        path = folder / f"uncertlr_native-{_key(toolchain, flags)}.so"
        if path.exists():
            try:
                return _open(path, parallel)
            except OSError as e:  # damaged or foreign: build it again
                errors.append(str(e))
        with tempfile.TemporaryDirectory() as tmp:
            out = Path(tmp) / "lib.so"
            proc = subprocess.run(
                [cc, *flags, str(_SOURCE), "-o", str(out), "-lm"], capture_output=True, text=True, timeout=300
            )
            if proc.returncode != 0 or not out.exists():
                errors.append(
                    f"{' '.join(extra)}: {proc.stderr.strip().splitlines()[-1:] or proc.returncode}"
                )
                continue
            try:
                atomic_write(path, lambda f: f.write(out.read_bytes()))
                return _open(path, parallel)
            except OSError as e:  # an unwritable cache folder: load the built file from the temporary one
                try:
                    lib = _open(out, parallel)
                    lib.path = out
                    return lib
                except OSError:
                    errors.append(f"{' '.join(extra)}: {e}")
    return "the build failed: " + "; ".join(errors)


def kernels() -> Kernels | None:
    """The compiled kernels, built on the first call of the process; ``None`` where they are not
    available (see :func:`status`). Later calls return the first call's answer."""
    if (got := _loaded.get("kernels")) is not None:
        return got  # type: ignore[return-value]
    if "reason" in _loaded:
        return None
    with _lock:
        if "kernels" not in _loaded and "reason" not in _loaded:
            result: Kernels | str
            if os.environ.get(ENV, "1").strip().lower() in {"0", "false", "no", "off"}:
                result = f"disabled by {ENV}=0"
            elif (cc := _compiler()) is None:
                result = "no C compiler ($CC, cc, gcc or clang) on PATH"
            else:
                try:
                    result = _build(cc, cache_dir() / "native")
                except (OSError, subprocess.SubprocessError) as e:
                    result = f"the build failed: {e}"
            _loaded["kernels" if isinstance(result, Kernels) else "reason"] = result
    return _loaded.get("kernels")  # type: ignore[return-value]


def status() -> str:
    """``"loaded: <path> (OpenMP | one thread)"``, ``"disabled: …"`` or ``"unavailable: <why>"`` (builds on first call)."""
    k = kernels()
    if k is not None:
        return f"loaded: {k.path} ({'OpenMP' if k.parallel else 'one thread'})"
    reason = str(_loaded.get("reason", ""))
    return f"disabled: {reason}" if reason.startswith("disabled") else f"unavailable: {reason}"


def _reset() -> None:
    """Forget the loaded library (tests)."""
    with _lock:
        _loaded.clear()
