/* Fused CPU kernels for the built-in per-parameter rules (uncertlr/torch/_fused.py, host path) and the noise sampler.
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
 *   apply:   the step with the factors, theta <- lerp(before, theta, x), with scale's x *= c folded in.
 *
 * The mean-field step's sample and KL, forward and backward, one pass each (see their section).
 *
 * And one for the batch's mean predictive entropy (the global modulator's signal, see its section).
 *
 * And one for the mean-field step's noise (uncertlr/torch/_noise.py): standard-normal float32 draws
 * from a counter-based generator (Philox4x32-10) and Box-Muller, split over threads (see its section).
 *
 * Threads: with OpenMP a segment of GRAIN elements or more is cut into one contiguous chunk per
 * thread (the runtime torch's own CPU kernels use: torch loads libgomp.so.1 first); smaller ones
 * run on the calling thread, as ATen's elementwise kernels do. The loops over a chunk are plain
 * loops the compiler vectorises. Sums, minima and maxima are combined in double. Nothing here
 * assumes finite input: the caller skips (op 0) segments whose sum is not finite.
 */
#include <float.h>
#include <math.h>
#include <stdint.h>
#include <string.h>
#ifdef _OPENMP
#include <omp.h>
#endif
#if defined(__AVX512F__)
#include <immintrin.h>
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
        MEASURE_P2_##SUF                                                                                    \
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
        case 1: CLAMP_INV_SQRT_##SUF break;                                                                 \
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
  /* The step with the factors: theta <- lerp(before, theta, f) (torch.lerp's formula, see LERP), where      \
     f = x * c[seg] if op[seg] == 1 (written back to x, as scale would, when write_x), else f = x. */         \
  void uncertlr_apply_##SUF(int nthreads, int64_t nseg, const int64_t* sizes, const int8_t* op,          \
                            const double* c, T* x, const T* before, T* theta, int write_x) {                \
    int64_t off = 0;                                                                                        \
    for (int64_t seg = 0; seg < nseg; ++seg) {                                                              \
      const int64_t end = off + sizes[seg];                                                                 \
      const int nt = threads_for(nthreads, sizes[seg]);                                                     \
      if (op[seg] == 1) {                                                                                   \
        const T k = (T)c[seg];                                                                              \
        CHUNKED(nt, off, end, {                                                                             \
          (void)tid_;                                                                                       \
          APPLY_SCALED_##SUF                                                                                \
        })                                                                                                  \
      } else {                                                                                              \
        CHUNKED(nt, off, end, {                                                                             \
          (void)tid_;                                                                                       \
          _Pragma("omp simd") for (int64_t i = lo_; i < hi_; ++i) {                                         \
            theta[i] = LERP(FMA, before[i], theta[i], x[i]);                                                \
          }                                                                                                 \
        })                                                                                                  \
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

/* The factors' power -1/2 (kappa = -0.5, P1-P3's default), per type: in float32 with AVX-512 from rsqrt14
 * and one Newton step, elsewhere 1 / sqrt(y). */
#if defined(__AVX512F__)
/* y = clamp(1 / sqrt(x), l, h) over [b, e) with the sum, minimum and maximum, as CLAMP_LOOP. rsqrt14 (relative
 * error < 2^-14) and one Newton step r (1.5 - 0.5 x r^2) give a relative error below 2^-22 against the
 * correctly rounded 1 / sqrt(x) (2^-24 each: a few float32 ulps), at a third of the cost of a square root and
 * a division per number, which bound the factors pass. A lane holding 0 or a subnormal x takes the exact formula. */
static void clamp_inv_sqrt_f32(float l, float h, float* x, int64_t b, int64_t e, float* acc, float* mn, float* mx) {
  const __m512 vl = _mm512_set1_ps(l), vh = _mm512_set1_ps(h), half = _mm512_set1_ps(0.5f);
  const __m512 three_halves = _mm512_set1_ps(1.5f), smallest = _mm512_set1_ps(FLT_MIN), one = _mm512_set1_ps(1.0f);
  __m512 vacc = _mm512_setzero_ps(), vmn = _mm512_set1_ps(INFINITY), vmx = _mm512_set1_ps(-INFINITY);
  int64_t i = b;
  for (; i + 16 <= e; i += 16) {
    const __m512 y = _mm512_loadu_ps(x + i);
    __m512 r = _mm512_rsqrt14_ps(y);
    r = _mm512_mul_ps(r, _mm512_fnmadd_ps(_mm512_mul_ps(_mm512_mul_ps(half, y), r), r, three_halves));
    const __mmask16 tiny = _mm512_cmp_ps_mask(y, smallest, _CMP_LT_OQ);
    if (tiny) r = _mm512_mask_div_ps(r, tiny, one, _mm512_sqrt_ps(y));
    r = _mm512_min_ps(_mm512_max_ps(r, vl), vh);
    _mm512_storeu_ps(x + i, r);
    vacc = _mm512_add_ps(vacc, r);
    vmn = _mm512_min_ps(vmn, r);
    vmx = _mm512_max_ps(vmx, r);
  }
  float a = _mm512_reduce_add_ps(vacc), lo = _mm512_reduce_min_ps(vmn), hi = _mm512_reduce_max_ps(vmx);
  for (; i < e; ++i) {
    float y = 1.0f / sqrtf(x[i]);
    y = y < l ? l : (y > h ? h : y);
    x[i] = y;
    a += y;
    lo = y < lo ? y : lo;
    hi = y > hi ? y : hi;
  }
  *acc += a;
  *mn = lo < *mn ? lo : *mn;
  *mx = hi > *mx ? hi : *mx;
}
#define CLAMP_INV_SQRT_f32 clamp_inv_sqrt_f32(l, h, x, blk, end, &acc, &mn, &mx);
#else
#define CLAMP_INV_SQRT_f32 CLAMP_LOOP(1.0f / sqrtf(y0))
#endif
#define CLAMP_INV_SQRT_f64 CLAMP_LOOP(1.0 / sqrt(y0))

/* Arrays read again only at the next step (P2's new EMA, the factors once applied) are written with
 * non-temporal stores in float32 with AVX-512: a plain store first reads the old line into the cache (a third
 * more memory traffic) and evicts lines the optimizer's step and the next forward pass use. */
#define MEASURE_P2_LOOP(T, FMA, ABS)                        \
  _Pragma("omp simd reduction(+ : acc)")                    \
  for (int64_t i = blk; i < end; ++i) {                     \
    const T m = LERP(FMA, ema[i], g[i], w);                 \
    const T r = ABS(m * sigma[i]);                          \
    ema_out[i] = m;                                         \
    raw[i] = r;                                             \
    acc += r;                                               \
  }
#define APPLY_SCALED_LOOP(T, FMA)                             \
  if (write_x) {                                              \
    _Pragma("omp simd") for (int64_t i = lo_; i < hi_; ++i) { \
      const T f = x[i] * k;                                   \
      x[i] = f;                                               \
      theta[i] = LERP(FMA, before[i], theta[i], f);           \
    }                                                         \
  } else {                                                    \
    _Pragma("omp simd") for (int64_t i = lo_; i < hi_; ++i) { \
      const T f = x[i] * k;                                   \
      theta[i] = LERP(FMA, before[i], theta[i], f);           \
    }                                                         \
  }
#if defined(__AVX512F__) && defined(__FMA__)
/* P2's measure over [b, e) as MEASURE_P2_LOOP (the same LERP per element), the EMA streamed; returns the sum. */
static float measure_p2_f32(const float* ema, const float* g, const float* sigma, float w, float* ema_out,
                            float* raw, int64_t b, int64_t e) {
  float acc = 0.0f;
  int64_t i = b;
  for (; i < e && ((uintptr_t)(ema_out + i) & 63); ++i) {
    const float m = LERP(fmaf, ema[i], g[i], w), r = fabsf(m * sigma[i]);
    ema_out[i] = m;
    raw[i] = r;
    acc += r;
  }
  const int small = w < 0.5f; /* LERP's branch, the same for every element */
  const __m512 vw = _mm512_set1_ps(small ? w : w - 1.0f);
  __m512 vacc = _mm512_setzero_ps();
  for (; i + 16 <= e; i += 16) {
    const __m512 a = _mm512_loadu_ps(ema + i), bb = _mm512_loadu_ps(g + i);
    const __m512 m = _mm512_fmadd_ps(vw, _mm512_sub_ps(bb, a), small ? a : bb);
    const __m512 r = _mm512_abs_ps(_mm512_mul_ps(m, _mm512_loadu_ps(sigma + i)));
    _mm512_stream_ps(ema_out + i, m);
    _mm512_storeu_ps(raw + i, r);
    vacc = _mm512_add_ps(vacc, r);
  }
  acc += _mm512_reduce_add_ps(vacc);
  for (; i < e; ++i) {
    const float m = LERP(fmaf, ema[i], g[i], w), r = fabsf(m * sigma[i]);
    ema_out[i] = m;
    raw[i] = r;
    acc += r;
  }
  _mm_sfence(); /* the streamed stores ordered before whatever reads them next (another thread, another pass) */
  return acc;
}
/* apply's scaled segment over [b, e) as APPLY_SCALED_LOOP (ATen's vectorised lerp), the factors streamed. */
static void apply_scaled_f32(float k, float* x, const float* before, float* theta, int64_t b, int64_t e,
                             int write_x) {
  int64_t i = b;
  for (; i < e && ((uintptr_t)(x + i) & 63); ++i) {
    const float f = x[i] * k;
    if (write_x) x[i] = f;
    theta[i] = LERP(fmaf, before[i], theta[i], f);
  }
  const __m512 vk = _mm512_set1_ps(k), half = _mm512_set1_ps(0.5f), one = _mm512_set1_ps(1.0f);
  for (; i + 16 <= e; i += 16) {
    const __m512 f = _mm512_mul_ps(_mm512_loadu_ps(x + i), vk);
    const __m512 a = _mm512_loadu_ps(before + i), t = _mm512_loadu_ps(theta + i);
    const __mmask16 small = _mm512_cmp_ps_mask(f, half, _CMP_LT_OQ);
    const __m512 coeff = _mm512_mask_blend_ps(small, _mm512_sub_ps(f, one), f);
    const __m512 base = _mm512_mask_blend_ps(small, t, a);
    if (write_x) _mm512_stream_ps(x + i, f);
    _mm512_storeu_ps(theta + i, _mm512_fmadd_ps(coeff, _mm512_sub_ps(t, a), base));
  }
  for (; i < e; ++i) {
    const float f = x[i] * k;
    if (write_x) x[i] = f;
    theta[i] = LERP(fmaf, before[i], theta[i], f);
  }
  _mm_sfence();
}
#define MEASURE_P2_f32 acc = measure_p2_f32(ema, g, sigma, w, ema_out, raw, blk, end);
#define APPLY_SCALED_f32 apply_scaled_f32(k, x, before, theta, lo_, hi_, write_x);
#else
#define MEASURE_P2_f32 MEASURE_P2_LOOP(float, fmaf, fabsf)
#define APPLY_SCALED_f32 APPLY_SCALED_LOOP(float, fmaf)
#endif
#define MEASURE_P2_f64 MEASURE_P2_LOOP(double, fma, fabs)
#define APPLY_SCALED_f64 APPLY_SCALED_LOOP(double, fma)

KERNELS(float, f32, fabsf, sqrtf, fmaf)
KERNELS(double, f64, fabs, sqrt, fma)

/* ---------------------------------------------------------------------------------------------------------
 * The mean-field sample and KL (uncertlr/torch/_meanfield.py, _SampleKL) for one particle and one prior
 * precision for every weight, with scale = exp(log_scale) computed by torch:
 *   forward:  w = loc + sign scale eps, diff = loc - prior_loc (written only when prior_loc is given), and
 *             sums = (sum log_scale, sum scale^2, sum diff^2), combined in double;
 *   backward: d_loc = g + diff k, d_log_scale = sign scale (g eps + scale sign k) - gkl, with k = gkl prec.
 * The formulas and their order are the eager kernel's; one pass each where eager PyTorch makes five and four.
 */
#define MEANFIELD(T, SUF)                                                                                    \
  static void sample_chunk_##SUF(const T* loc, const T* ls, const T* scale, const T* eps, const T* ploc,     \
                                 T sign, T* w, T* diff, int64_t b, int64_t e, double* out) {                \
    double s0 = 0.0, s1 = 0.0, s2 = 0.0;                                                                    \
    for (int64_t blk = b; blk < e; blk += 4096) {                                                           \
      const int64_t end = blk + 4096 < e ? blk + 4096 : e;                                                  \
      T a0 = 0, a1 = 0, a2 = 0;                                                                             \
      if (ploc) {                                                                                           \
        _Pragma("omp simd reduction(+ : a0, a1, a2)")                                                       \
        for (int64_t i = blk; i < end; ++i) {                                                               \
          const T sc = scale[i], d = loc[i] - ploc[i];                                                      \
          w[i] = loc[i] + sign * sc * eps[i];                                                               \
          diff[i] = d;                                                                                      \
          a0 += ls[i];                                                                                      \
          a1 += sc * sc;                                                                                    \
          a2 += d * d;                                                                                      \
        }                                                                                                   \
      } else {                                                                                              \
        _Pragma("omp simd reduction(+ : a0, a1, a2)")                                                       \
        for (int64_t i = blk; i < end; ++i) {                                                               \
          const T sc = scale[i], d = loc[i];                                                                \
          w[i] = loc[i] + sign * sc * eps[i];                                                               \
          a0 += ls[i];                                                                                      \
          a1 += sc * sc;                                                                                    \
          a2 += d * d;                                                                                      \
        }                                                                                                   \
      }                                                                                                     \
      s0 += (double)a0;                                                                                     \
      s1 += (double)a1;                                                                                     \
      s2 += (double)a2;                                                                                     \
    }                                                                                                       \
    out[0] = s0;                                                                                            \
    out[1] = s1;                                                                                            \
    out[2] = s2;                                                                                            \
  }                                                                                                         \
                                                                                                            \
  void uncertlr_sample_##SUF(int nthreads, int64_t n, const T* loc, const T* ls, const T* scale, const T* eps, \
                             const T* ploc, T sign, T* w, T* diff, double* sums) {                          \
    const int nt = threads_for(nthreads, n);                                                                \
    double part[MAX_THREADS][3];                                                                            \
    CHUNKED(nt, 0, n, { sample_chunk_##SUF(loc, ls, scale, eps, ploc, sign, w, diff, lo_, hi_, part[tid_]); }) \
    for (int k = 0; k < 3; ++k) {                                                                           \
      double total = 0.0;                                                                                   \
      for (int t = 0; t < nt; ++t) total += part[t][k];                                                     \
      sums[k] = total;                                                                                      \
    }                                                                                                       \
  }                                                                                                         \
                                                                                                            \
  static void sample_grad_chunk_##SUF(const T* g, const T* eps, const T* scale, const T* diff, T k, T gkl,     \
                                      T sign, T* d_loc, T* d_ls, int64_t b, int64_t e) {                   \
    const T sk = sign * k;                                                                                  \
    _Pragma("omp simd")                                                                                     \
    for (int64_t i = b; i < e; ++i) {                                                                       \
      const T gi = g[i], sc = scale[i];                                                                     \
      d_loc[i] = gi + diff[i] * k;                                                                          \
      d_ls[i] = -gkl + sign * sc * (gi * eps[i] + sc * sk);                                                 \
    }                                                                                                       \
  }                                                                                                         \
                                                                                                            \
  void uncertlr_sample_grad_##SUF(int nthreads, int64_t n, const T* g, const T* eps, const T* scale,        \
                                  const T* diff, T k, T gkl, T sign, T* d_loc, T* d_ls) {                  \
    const int nt = threads_for(nthreads, n);                                                                \
    CHUNKED(nt, 0, n, { (void)tid_; sample_grad_chunk_##SUF(g, eps, scale, diff, k, gkl, sign, d_loc, d_ls, lo_, hi_); }) \
  }

MEANFIELD(float, f32)
MEANFIELD(double, f64)

/* ---------------------------------------------------------------------------------------------------------
 * Standard-normal draws for the mean-field step (uncertlr/torch/_noise.py): Philox4x32-10 (Salmon et al.,
 * "Parallel random numbers: as easy as 1, 2, 3", SC'11; the counter-based generator of cuRAND and JAX's
 * option) and Box-Muller. Block t (counter (t, 0, 0) as (low word, high word, 0, 0), key = the 64-bit
 * seed) gives four 32-bit words, two (u1, u2) pairs, four N(0, 1) numbers. Tiles of 16 blocks give 64
 * numbers, word k of block i at position 16 k + i of the tile, then cos and sin of each pair: out[64 T + 32 h
 * + i] = r cos(2 pi u2), out[64 T + 32 h + 16 + i] = r sin(2 pi u2), with r = sqrt(-2 ln u1), u1 from word
 * 2h and u2 from word 2h + 1 of block 16 T + i. The numbers depend on the seed alone, never on the thread
 * count; a draw of n numbers is the first n of that sequence.
 *
 * u1 = (2 floor(w / 2^9) + 1) 2^-24 is an exact float in (0, 1) (23 bits, so no log 0; the largest
 * radius is 5.77, as with ATen's own 24-bit float sampler), u2 = floor(w / 2^8) 2^-24 in [0, 1).
 * ln and sin/cos are Cephes' single-precision polynomials (within ~2 ulp of the float64 result),
 * branch-free so the loops vectorise (with AVX-512, Philox itself runs on 16 lanes through intrinsics;
 * elsewhere the compiler vectorises the portable loop).
 */
#if defined(__AVX512F__)
#include <immintrin.h>
#endif

#define PHILOX_M0 0xD2511F53u
#define PHILOX_M1 0xCD9E8D57u
#define PHILOX_W0 0x9E3779B9u
#define PHILOX_W1 0xBB67AE85u
#define PHILOX_ROUND(c0, c1, c2, c3, a0, a1)                                               \
  do {                                                                                     \
    const uint64_t p0_ = (uint64_t)PHILOX_M0 * (c0), p1_ = (uint64_t)PHILOX_M1 * (c2);     \
    const uint32_t n0_ = (uint32_t)(p1_ >> 32) ^ (c1) ^ (a0);                              \
    const uint32_t n2_ = (uint32_t)(p0_ >> 32) ^ (c3) ^ (a1);                              \
    (c1) = (uint32_t)p1_;                                                                  \
    (c3) = (uint32_t)p0_;                                                                  \
    (c0) = n0_;                                                                            \
    (c2) = n2_;                                                                            \
    (a0) += PHILOX_W0;                                                                     \
    (a1) += PHILOX_W1;                                                                     \
  } while (0)
#define PHILOX_10(c0, c1, c2, c3, a0, a1)   \
  PHILOX_ROUND(c0, c1, c2, c3, a0, a1);     \
  PHILOX_ROUND(c0, c1, c2, c3, a0, a1);     \
  PHILOX_ROUND(c0, c1, c2, c3, a0, a1);     \
  PHILOX_ROUND(c0, c1, c2, c3, a0, a1);     \
  PHILOX_ROUND(c0, c1, c2, c3, a0, a1);     \
  PHILOX_ROUND(c0, c1, c2, c3, a0, a1);     \
  PHILOX_ROUND(c0, c1, c2, c3, a0, a1);     \
  PHILOX_ROUND(c0, c1, c2, c3, a0, a1);     \
  PHILOX_ROUND(c0, c1, c2, c3, a0, a1);     \
  PHILOX_ROUND(c0, c1, c2, c3, a0, a1)
#define NORMAL_TILE 16 /* Philox blocks per tile: 64 numbers */

/* One Philox4x32-10 block (tests check it against Random123's known answers). */
void uncertlr_philox4x32_10(const uint32_t* ctr, const uint32_t* key, uint32_t* out) {
  uint32_t c0 = ctr[0], c1 = ctr[1], c2 = ctr[2], c3 = ctr[3], a0 = key[0], a1 = key[1];
  PHILOX_10(c0, c1, c2, c3, a0, a1);
  out[0] = c0;
  out[1] = c1;
  out[2] = c2;
  out[3] = c3;
}

/* The blocks of tile t: r[16 k + i] = word k of block 16 t + i. */
static void philox_tile(uint64_t t, uint32_t k0, uint32_t k1, uint32_t* r) {
  const uint64_t base = t * NORMAL_TILE;
#if defined(__AVX512F__)
  const __m512i lane = _mm512_setr_epi32(0, 1, 2, 3, 4, 5, 6, 7, 8, 9, 10, 11, 12, 13, 14, 15);
  const __m512i lo = _mm512_set1_epi32((int)(uint32_t)base), hi = _mm512_set1_epi32((int)(uint32_t)(base >> 32));
  __m512i c0 = _mm512_add_epi32(lo, lane);
  const __mmask16 carry = _mm512_cmplt_epu32_mask(c0, lo); /* the low word wrapped within the tile */
  __m512i c1 = _mm512_mask_add_epi32(hi, carry, hi, _mm512_set1_epi32(1));
  __m512i c2 = _mm512_setzero_si512(), c3 = _mm512_setzero_si512();
  const __m512i m0 = _mm512_set1_epi64(PHILOX_M0), m1 = _mm512_set1_epi64(PHILOX_M1);
  uint32_t a0 = k0, a1 = k1;
  for (int round = 0; round < 10; ++round) {
    /* 32 x 32 -> 64-bit products of the even and the odd lanes; hi and lo words put back in place */
    const __m512i e0 = _mm512_mul_epu32(c0, m0), o0 = _mm512_mul_epu32(_mm512_srli_epi64(c0, 32), m0);
    const __m512i e1 = _mm512_mul_epu32(c2, m1), o1 = _mm512_mul_epu32(_mm512_srli_epi64(c2, 32), m1);
    const __m512i hi0 = _mm512_mask_mov_epi32(_mm512_srli_epi64(e0, 32), 0xAAAA, o0);
    const __m512i lo0 = _mm512_mask_mov_epi32(e0, 0xAAAA, _mm512_slli_epi64(o0, 32));
    const __m512i hi1 = _mm512_mask_mov_epi32(_mm512_srli_epi64(e1, 32), 0xAAAA, o1);
    const __m512i lo1 = _mm512_mask_mov_epi32(e1, 0xAAAA, _mm512_slli_epi64(o1, 32));
    c0 = _mm512_xor_si512(_mm512_xor_si512(hi1, c1), _mm512_set1_epi32((int)a0));
    c2 = _mm512_xor_si512(_mm512_xor_si512(hi0, c3), _mm512_set1_epi32((int)a1));
    c1 = lo1;
    c3 = lo0;
    a0 += PHILOX_W0;
    a1 += PHILOX_W1;
  }
  _mm512_storeu_si512(r, c0);
  _mm512_storeu_si512(r + 16, c1);
  _mm512_storeu_si512(r + 32, c2);
  _mm512_storeu_si512(r + 48, c3);
#else
  _Pragma("omp simd")
  for (int i = 0; i < NORMAL_TILE; ++i) {
    const uint64_t ctr = base + (uint64_t)i;
    uint32_t c0 = (uint32_t)ctr, c1 = (uint32_t)(ctr >> 32), c2 = 0, c3 = 0, a0 = k0, a1 = k1;
    PHILOX_10(c0, c1, c2, c3, a0, a1);
    r[i] = c0;
    r[16 + i] = c1;
    r[32 + i] = c2;
    r[48 + i] = c3;
  }
#endif
}

/* ln x for a normal float x in (0, 1] (Cephes logf). */
static inline float ln_unit(float x) {
  union { float f; uint32_t i; } u = {x};
  const float e = (float)((int32_t)((u.i >> 23) & 0xff) - 126); /* x = m 2^e, m in [0.5, 1) */
  u.i = (u.i & 0x007fffffu) | 0x3f000000u;
  const float small = (float)(u.f < 0.70710678f); /* then m -> 2m, e -> e - 1: m in [0.707, 1.414) */
  const float m = u.f + small * u.f - 1.0f, fe = e - small;
  const float z = m * m;
  float y = 7.0376836292E-2f;
  y = y * m - 1.1514610310E-1f;
  y = y * m + 1.1676998740E-1f;
  y = y * m - 1.2420140846E-1f;
  y = y * m + 1.4249322787E-1f;
  y = y * m - 1.6668057665E-1f;
  y = y * m + 2.0000714765E-1f;
  y = y * m - 2.4999993993E-1f;
  y = y * m + 3.3333331174E-1f;
  y = y * m * z - 2.12194440e-4f * fe - 0.5f * z;
  return m + y + 0.693359375f * fe;
}

/* sin and cos of 2 pi t for t in [0, 1): a quarter turn q, then Cephes' sinf/cosf on [-pi/4, pi/4]. */
static inline void sincos_turn(float t, float* s, float* c) {
  const int32_t q = (int32_t)(t * 4.0f + 0.5f);
  const float x = (t * 4.0f - (float)q) * 1.57079632679489662f, z = x * x;
  const float sp = ((-1.9515295891E-4f * z + 8.3321608736E-3f) * z - 1.6666654611E-1f) * z * x + x;
  const float cp = ((2.443315711809948E-5f * z - 1.388731625493765E-3f) * z + 4.166664568298827E-2f) * z * z -
                   0.5f * z + 1.0f;
  const int odd = q & 1;
  *s = (odd ? cp : sp) * (1.0f - (float)(q & 2));       /* q = 0, 1, 2, 3: sp, cp, -sp, -cp */
  *c = (odd ? sp : cp) * (1.0f - (float)((q + 1) & 2)); /*                 cp, -sp, -cp, sp */
}

static void box_muller_tile(const uint32_t* r, float* out) {
  for (int h = 0; h < 2; ++h) {
    _Pragma("omp simd")
    for (int i = 0; i < NORMAL_TILE; ++i) {
      const uint32_t a = r[32 * h + i], b = r[32 * h + 16 + i];
      const float u1 = (float)(int32_t)((a >> 9) * 2u + 1u) * 5.9604644775390625e-08f;
      const float u2 = (float)(int32_t)(b >> 8) * 5.9604644775390625e-08f;
      const float rad = sqrtf(-2.0f * ln_unit(u1));
      float s, c;
      sincos_turn(u2, &s, &c);
      out[32 * h + i] = rad * c;
      out[32 * h + 16 + i] = rad * s;
    }
  }
}

/* out[0, n) = the first n numbers of seed's sequence; tiles split over nthreads (large draws). */
void uncertlr_normal_f32(int nthreads, int64_t n, uint64_t seed, float* out) {
  const uint32_t k0 = (uint32_t)seed, k1 = (uint32_t)(seed >> 32);
  const int64_t tiles = n / 64;
  const int nt = threads_for(nthreads, n);
  CHUNKED(nt, 0, tiles, {
    uint32_t r[64];
    (void)tid_;
    for (int64_t t = lo_; t < hi_; ++t) {
      philox_tile((uint64_t)t, k0, k1, r);
      box_muller_tile(r, out + 64 * t);
    }
  })
  if (n % 64) {
    uint32_t r[64];
    float last[64];
    philox_tile((uint64_t)tiles, k0, k1, r);
    box_muller_tile(r, last);
    for (int64_t i = 0; i < n % 64; ++i) out[64 * tiles + i] = last[i];
  }
}

/* Whether the sampler above is vectorised well enough to beat ATen's (measured with AVX2 and AVX-512). */
int uncertlr_normal_fast(void) {
#if defined(__AVX512F__) || (defined(__AVX2__) && defined(__FMA__))
  return 1;
#else
  return 0;
#endif
}

/* ---------------------------------------------------------------- the batch's predictive entropy
 *
 * For the LR modulator's global signal (uncertlr/torch/signals.py, batch_entropy): the mean over
 * the rows of x[rows, c] (logits of one weight draw) of the softmax entropy
 *   H = log sum_j exp(x_j - m) - sum_j p_j (x_j - m),  m = max_j x_j,  p = softmax(x),
 * in double, written to out[0] in the logits' dtype. One call instead of the six small torch ops
 * the eager formula needs: on a CPU each of those costs 15-45 us right after a training step has
 * pushed the dispatcher's code out of the caches, several times the arithmetic. Returns 0 (and
 * writes nothing) when a logit is not finite: the caller then computes it the eager way, whose NaN
 * and inf semantics stay the reference.
 */
#define DEFINE_ENTROPY(T, SUF)                                                                         \
  int uncertlr_entropy_##SUF(int64_t rows, int64_t c, const T* x, T* out) {                           \
    double total = 0.0;                                                                                \
    for (int64_t r = 0; r < rows; ++r) {                                                               \
      const T* row = x + r * c;                                                                        \
      double m = -INFINITY;                                                                            \
      for (int64_t j = 0; j < c; ++j) {                                                                \
        if (!isfinite(row[j])) return 0;                                                               \
        m = (double)row[j] > m ? (double)row[j] : m;                                                   \
      }                                                                                                \
      double s = 0.0, sd = 0.0;                                                                        \
      for (int64_t j = 0; j < c; ++j) {                                                                \
        const double d = (double)row[j] - m, e = exp(d);                                               \
        s += e;                                                                                        \
        sd += e * d;                                                                                   \
      }                                                                                                \
      total += log(s) - sd / s; /* s >= 1: the largest logit contributes exp(0) */                    \
    }                                                                                                  \
    out[0] = (T)(total / (double)rows);                                                                \
    return 1;                                                                                          \
  }
DEFINE_ENTROPY(float, f32)
DEFINE_ENTROPY(double, f64)

/* ---------------------------------------------------------------- the per-parameter rule's snapshot
 *
 * dst <- src (n bytes; both 64-byte aligned for the streaming path). The modulator's snapshot of the
 * parameters before the optimizer steps is read back only after that step: non-temporal stores write it
 * without first reading the destination's old contents into the cache (a third of a copy's memory traffic)
 * and without evicting what the step is about to use. Split over threads.
 */
void uncertlr_snapshot(int nthreads, int64_t n, const char* src, char* dst) {
#if defined(__AVX512F__)
  if ((((uintptr_t)src | (uintptr_t)dst) & 63) == 0) {
    const int64_t lines = n / 64;
    const int nt = threads_for(nthreads, lines * 16);
    CHUNKED(nt, 0, lines, {
      (void)tid_;
      for (int64_t i = lo_; i < hi_; ++i)
        _mm512_stream_si512((__m512i*)(dst + 64 * i), _mm512_load_si512((const __m512i*)(src + 64 * i)));
    })
    _mm_sfence();
    for (int64_t i = lines * 64; i < n; ++i) dst[i] = src[i];
    return;
  }
#endif
  (void)nthreads;
  memcpy(dst, src, (size_t)n);
}

/* The ABI version _native.py checks before it uses a loaded library. */
int uncertlr_native_abi(void) { return 7; }
