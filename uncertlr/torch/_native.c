/* Fused CPU kernels for the built-in per-parameter rules (uncertlr/torch/_fused.py, host path).
 *
 * Built and loaded by uncertlr/torch/_native.py (ctypes; plain C, no torch headers). Each kernel
 * makes one pass over a flat tensor split into segments, where eager PyTorch makes three to five:
 *
 *   measure: raw = |ema + w (g - ema)| * sigma (P2, the new EMA written too), sigma (P1) or
 *            sigma^2 (P3); and each segment's sum of raw.
 *   noise_measure: the same with sigma from the gradient-noise moments, updated in the same pass
 *            (sumsq first: each segment's sum of g^2, to tell whether its gradient is finite).
 *   factors: per segment, op 1: x = clamp(power(x), lo, hi) with each segment's sum, min and max;
 *            op 2: x = 1; op 0: left alone.
 *   scale:   x *= c[segment] where op == 1.
 *
 * Threads: with OpenMP a segment of GRAIN elements or more is cut into one contiguous chunk per
 * thread (the runtime torch's own CPU kernels use: torch loads libgomp.so.1 first); smaller ones
 * run on the calling thread, as ATen's elementwise kernels do. The loops over a chunk are plain
 * loops the compiler vectorises. Sums, minima and maxima are combined in double. Nothing here
 * assumes finite input: the caller skips (op 0) segments whose sum is not finite.
 */
#include <math.h>
#include <stdint.h>
#ifdef _OPENMP
#include <omp.h>
#endif

#define GRAIN 32768
#define MAX_THREADS 256

/* Run BODY over [b, e) on nt threads, each over its own chunk [lo_, hi_), with its index tid_. */
#ifdef _OPENMP
#define CHUNKED(nt, b, e, BODY)                                                    \
  if ((nt) <= 1) {                                                                 \
    const int tid_ = 0;                                                            \
    const int64_t lo_ = (b), hi_ = (e);                                            \
    BODY                                                                           \
  } else {                                                                         \
    _Pragma("omp parallel num_threads(nt)") {                                      \
      const int tid_ = omp_get_thread_num(), n_ = omp_get_num_threads();           \
      const int64_t len_ = (e) - (b);                                              \
      const int64_t lo_ = (b) + len_ * tid_ / n_, hi_ = (b) + len_ * (tid_ + 1) / n_; \
      BODY                                                                         \
    }                                                                              \
  }
#else
#define CHUNKED(nt, b, e, BODY)                                                    \
  {                                                                                \
    const int tid_ = 0;                                                            \
    const int64_t lo_ = (b), hi_ = (e);                                            \
    (void)(nt);                                                                    \
    BODY                                                                           \
  }
#endif

/* torch.lerp's formula, as ATen's vectorised CPU kernel computes it: a fused multiply-add from the nearer end
 * (exact at w = 1: the gradient-noise moments with decay 0 are then the gradient's own). Where the CPU has no
 * FMA instruction, fma() would be a slow library call: the unfused formula, equal up to rounding. */
#ifdef __FMA__
#define LERP(FMA_, a, b, w) ((w) < 0.5 ? FMA_((w), (b) - (a), (a)) : FMA_((w) - 1, (b) - (a), (b)))
#else
#define LERP(FMA_, a, b, w) ((w) < 0.5 ? (a) + (w) * ((b) - (a)) : (b) - ((b) - (a)) * (1 - (w)))
#endif

/* For each segment s of sizes[]: sums[s] = the sum over its chunks of CHUNK_SUM, an expression of the chunk
 * [lo_, hi_) and of s (the kernels' arguments nthreads, nseg, sizes and sums in scope). */
#define SEGMENT_SUMS(CHUNK_SUM)                                         \
  int64_t off = 0;                                                      \
  for (int64_t s = 0; s < nseg; ++s) {                                  \
    const int64_t end = off + sizes[s];                                 \
    const int nt = threads_for(nthreads, sizes[s]);                     \
    double part[MAX_THREADS] = {0};                                     \
    CHUNKED(nt, off, end, { part[tid_] = (CHUNK_SUM); })                \
    double total = 0.0;                                                 \
    for (int t = 0; t < nt; ++t) total += part[t];                      \
    sums[s] = total;                                                    \
    off = end;                                                          \
  }

static int threads_for(int nthreads, int64_t n) {
  if (n < GRAIN || nthreads < 1) return 1;
  return nthreads > MAX_THREADS ? MAX_THREADS : nthreads;
}

#define KERNELS(T, SUF, ABS, SQRT, FMA)                                                                          \
  static double measure_chunk_##SUF(int kind, const T* ema, const T* g, const T* sigma, T w, T* ema_out,  \
                                    T* raw, int64_t b, int64_t e) {                                         \
    T acc = 0; /* per chunk in T, vectorised; chunks are combined in double */                              \
    double total = 0.0;                                                                                     \
    for (int64_t blk = b; blk < e; blk += 4096) {                                                           \
      const int64_t end = blk + 4096 < e ? blk + 4096 : e;                                                  \
      acc = 0;                                                                                              \
      if (kind == 0) {                                                                                      \
        _Pragma("omp simd reduction(+ : acc)")                                                              \
        for (int64_t i = blk; i < end; ++i) {                                                               \
          const T m = LERP(FMA, ema[i], g[i], w);                                                                \
          const T r = ABS(m * sigma[i]);                                                                    \
          ema_out[i] = m;                                                                                   \
          raw[i] = r;                                                                                       \
          acc += r;                                                                                         \
        }                                                                                                   \
      } else if (kind == 1) {                                                                               \
        _Pragma("omp simd reduction(+ : acc)")                                                              \
        for (int64_t i = blk; i < end; ++i) {                                                               \
          const T r = sigma[i];                                                                             \
          raw[i] = r;                                                                                       \
          acc += r;                                                                                         \
        }                                                                                                   \
      } else {                                                                                              \
        _Pragma("omp simd reduction(+ : acc)")                                                              \
        for (int64_t i = blk; i < end; ++i) {                                                               \
          const T r = sigma[i] * sigma[i];                                                                  \
          raw[i] = r;                                                                                       \
          acc += r;                                                                                         \
        }                                                                                                   \
      }                                                                                                     \
      total += (double)acc;                                                                                 \
    }                                                                                                       \
    return total;                                                                                           \
  }                                                                                                         \
                                                                                                            \
  void uncertlr_measure_##SUF(int nthreads, int64_t nseg, const int64_t* sizes, int kind, const T* ema,   \
                              const T* g, const T* sigma, T w, T* ema_out, T* raw, double* sums) {          \
    SEGMENT_SUMS(measure_chunk_##SUF(kind, ema, g, sigma, w, ema_out, raw, lo_, hi_))                      \
  }                                                                                                         \
                                                                                                            \
  static double sumsq_chunk_##SUF(const T* g, int64_t b, int64_t e) {                                       \
    double total = 0.0;                                                                                     \
    for (int64_t blk = b; blk < e; blk += 4096) {                                                           \
      const int64_t end = blk + 4096 < e ? blk + 4096 : e;                                                  \
      T acc = 0; /* g^2 in T: a square that overflows is inf, as in eager */                                \
      _Pragma("omp simd reduction(+ : acc)")                                                                \
      for (int64_t i = blk; i < end; ++i) acc += g[i] * g[i];                                               \
      total += (double)acc;                                                                                 \
    }                                                                                                       \
    return total;                                                                                           \
  }                                                                                                         \
                                                                                                            \
  /* Each segment's sum of g^2 (whether its gradient may enter the gradient-noise moments). */              \
  void uncertlr_sumsq_##SUF(int nthreads, int64_t nseg, const int64_t* sizes, const T* g, double* sums) {  \
    SEGMENT_SUMS(sumsq_chunk_##SUF(g, lo_, hi_))                                                            \
  }                                                                                                         \
                                                                                                            \
  static double noise_chunk_##SUF(int kind, int upd, T wn, T ic, const T* mean, const T* sq, T* mean_out,  \
                                  T* sq_out, const T* ema, const T* g, T w, T* ema_out, T* raw, int64_t b, \
                                  int64_t e) {                                                              \
    double total = 0.0;                                                                                     \
    for (int64_t blk = b; blk < e; blk += 4096) {                                                           \
      const int64_t end = blk + 4096 < e ? blk + 4096 : e;                                                  \
      T acc = 0;                                                                                            \
      /* one branch-free loop per case, so that each vectorises */                                          \
      switch (kind * 2 + (upd != 0)) {                                                                      \
        case 0: NOISE_LOOP(0, 0, FMA, SQRT, ABS) break;                                                                     \
        case 1: NOISE_LOOP(1, 0, FMA, SQRT, ABS) break;                                                                     \
        case 2: NOISE_LOOP(0, 1, FMA, SQRT, ABS) break;                                                                     \
        case 3: NOISE_LOOP(1, 1, FMA, SQRT, ABS) break;                                                                     \
        case 4: NOISE_LOOP(0, 2, FMA, SQRT, ABS) break;                                                                     \
        default: NOISE_LOOP(1, 2, FMA, SQRT, ABS) break;                                                                    \
      }                                                                                                     \
      total += (double)acc;                                                                                 \
    }                                                                                                       \
    return total;                                                                                           \
  }                                                                                                         \
                                                                                                            \
  /* The gradient-noise moments (mean, sq <- lerp toward g, g^2 where upd[s]; else copied) and, from the   \
     std they give up to a factor per segment (sqrt(max(sq - mean^2 ic, 0))), the measure and its sums.  */ \
  void uncertlr_noise_measure_##SUF(int nthreads, int64_t nseg, const int64_t* sizes, int kind,          \
                                    const int8_t* upd, const double* ic, T wn, const T* mean, const T* sq,  \
                                    T* mean_out, T* sq_out, const T* ema, const T* g, T w, T* ema_out,      \
                                    T* raw, double* sums) {                                                 \
    SEGMENT_SUMS(noise_chunk_##SUF(kind, upd[s], wn, (T)ic[s], mean, sq, mean_out, sq_out, ema, g, w, ema_out, \
                                   raw, lo_, hi_))                                                          \
  }                                                                                                         \
                                                                                                            \
  /* One clamp-and-reduce pass over [b, e) for a power expression POW of y0 = x[i]. */                      \
  static void clamp_chunk_##SUF(int power, T l, T h, T* x, int64_t b, int64_t e, double* sum, T* mn_out,   \
                                T* mx_out) {                                                                \
    T mn = (T)INFINITY, mx = (T)-INFINITY;                                                                  \
    double total = 0.0;                                                                                     \
    for (int64_t blk = b; blk < e; blk += 4096) {                                                           \
      const int64_t end = blk + 4096 < e ? blk + 4096 : e;                                                  \
      T acc = 0;                                                                                            \
      switch (power) {                                                                                      \
        case 1: CLAMP_LOOP((T)1 / SQRT(y0)) break;                                                          \
        case 2: CLAMP_LOOP(SQRT(y0)) break;                                                                 \
        case 3: CLAMP_LOOP((T)1 / y0) break;                                                                \
        case 4: CLAMP_LOOP(y0 * y0) break;                                                                  \
        default: CLAMP_LOOP(y0) break;                                                                      \
      }                                                                                                     \
      total += (double)acc;                                                                                 \
    }                                                                                                       \
    *sum = total;                                                                                           \
    *mn_out = mn;                                                                                           \
    *mx_out = mx;                                                                                           \
  }                                                                                                         \
                                                                                                            \
  void uncertlr_factors_##SUF(int nthreads, int64_t nseg, const int64_t* sizes, const int8_t* op,        \
                              int power, const double* lo, const double* hi, T* x, double* sums,           \
                              double* mins, double* maxs) {                                                 \
    int64_t off = 0;                                                                                        \
    for (int64_t s = 0; s < nseg; ++s) {                                                                    \
      const int64_t end = off + sizes[s];                                                                   \
      const int nt = threads_for(nthreads, sizes[s]);                                                      \
      if (op[s] == 1) {                                                                                     \
        const T l = (T)lo[s], h = (T)hi[s];                                                                 \
        double part[MAX_THREADS] = {0};                                                                     \
        T pmn[MAX_THREADS], pmx[MAX_THREADS]; /* the runtime may give fewer threads than asked */           \
        for (int t = 0; t < nt; ++t) {                                                                      \
          pmn[t] = (T)INFINITY;                                                                             \
          pmx[t] = (T)-INFINITY;                                                                            \
        }                                                                                                   \
        CHUNKED(nt, off, end, { clamp_chunk_##SUF(power, l, h, x, lo_, hi_, &part[tid_], &pmn[tid_], &pmx[tid_]); }) \
        double total = 0.0, mn = INFINITY, mx = -INFINITY;                                                  \
        for (int t = 0; t < nt; ++t) {                                                                      \
          total += part[t];                                                                                 \
          mn = pmn[t] < mn ? pmn[t] : mn;                                                                   \
          mx = pmx[t] > mx ? pmx[t] : mx;                                                                   \
        }                                                                                                   \
        sums[s] = total;                                                                                    \
        mins[s] = mn;                                                                                       \
        maxs[s] = mx;                                                                                       \
      } else if (op[s] == 2) {                                                                              \
        CHUNKED(nt, off, end, { for (int64_t i = lo_; i < hi_; ++i) x[i] = (T)1; (void)tid_; })            \
      }                                                                                                     \
      off = end;                                                                                            \
    }                                                                                                       \
  }                                                                                                         \
                                                                                                            \
  void uncertlr_scale_##SUF(int nthreads, int64_t nseg, const int64_t* sizes, const int8_t* op,          \
                            const double* c, T* x) {                                                        \
    int64_t off = 0;                                                                                        \
    for (int64_t s = 0; s < nseg; ++s) {                                                                    \
      const int64_t end = off + sizes[s];                                                                   \
      const int nt = threads_for(nthreads, sizes[s]);                                                      \
      if (op[s] == 1) {                                                                                     \
        const T k = (T)c[s];                                                                                \
        CHUNKED(nt, off, end, { for (int64_t i = lo_; i < hi_; ++i) x[i] *= k; (void)tid_; })              \
      }                                                                                                     \
      off = end;                                                                                            \
    }                                                                                                       \
  }

/* The body of noise_chunk's loop over one block for constant UPD (move the moments) and KIND (the measure). */
#define NOISE_LOOP(UPD, KIND, FMA, SQRT, ABS)                                                               \
  _Pragma("omp simd reduction(+ : acc)")                                                      \
  for (int64_t i = blk; i < end; ++i) {                                                       \
    const __typeof__(*raw) gi = g[i];                                                         \
    const __typeof__(*raw) m = (UPD) ? LERP(FMA, mean[i], gi, wn) : mean[i];                  \
    const __typeof__(*raw) q = (UPD) ? LERP(FMA, sq[i], gi * gi, wn) : sq[i];                 \
    mean_out[i] = m;                                                                          \
    sq_out[i] = q;                                                                            \
    __typeof__(*raw) v = q - (m * m) * ic; /* no FMA here (-std=c11): exactly 0 where it cancels */ \
    v = v < 0 ? 0 : v;                     /* NaN stays NaN, as clamp_min does */             \
    const __typeof__(*raw) sd = SQRT(v);                                                      \
    __typeof__(*raw) r;                                                                       \
    if ((KIND) == 0) {                                                                        \
      const __typeof__(*raw) em = LERP(FMA, ema[i], gi, w);                                   \
      ema_out[i] = em;                                                                        \
      r = ABS(sd * em);                                                                       \
    } else {                                                                                  \
      r = (KIND) == 1 ? sd : sd * sd;                                                         \
    }                                                                                         \
    raw[i] = r;                                                                               \
    acc += r;                                                                                 \
  }

/* The body of clamp_chunk's loop over one block [blk, end): y = clamp(POW, l, h), with the running
 * sum (acc), minimum and maximum. Comparisons, not fminf/fmaxf: those are library calls unless
 * NaN semantics are relaxed, and the loop would not vectorise. */
#define CLAMP_LOOP(POW)                             \
  _Pragma("omp simd reduction(+ : acc) reduction(min : mn) reduction(max : mx)") \
  for (int64_t i = blk; i < end; ++i) {             \
    const __typeof__(*x) y0 = x[i];                 \
    __typeof__(*x) y = POW;                         \
    y = y < l ? l : (y > h ? h : y);                \
    x[i] = y;                                       \
    acc += y;                                       \
    mn = y < mn ? y : mn;                           \
    mx = y > mx ? y : mx;                           \
  }

KERNELS(float, f32, fabsf, sqrtf, fmaf)
KERNELS(double, f64, fabs, sqrt, fma)

/* The ABI version _native.py checks before it uses a loaded library. */
int uncertlr_native_abi(void) { return 2; }
