"""C source of the native sparse kernels (compiled on first use by `prunekit.sparse._native`).

Plain C with no PyTorch headers, so it compiles in well under a second with the system compiler;
called through ctypes. Weights are CSR: `rowptr` (int32, R+1), `cols` (int32), `vals` (float32).

- `pk_spmm`: Y[b, r, :M] = bias[r] + sum_k vals[k] * X[b, cols[k], :M] for every batch b. The
  layout of an im2col'd convolution ([K, L] per sample) and of a transposed linear input. The inner
  loop broadcasts one weight and multiplies a contiguous row of X (32 columns per step), so it
  runs at FMA speed; M == 1 (a matrix-vector product) gathers 8 inputs per step instead (masked for a row's tail).
- `pk_linear`: y[n, :R] = bias + W x[n, :K] for row-major x [N, K] and y [N, R]: blocks of 64
  samples are transposed into a scratch buffer, multiplied with `pk_spmm`, and transposed back
  (the scratch buffer is per calling thread, kept between calls).

Threads: OpenMP splits output rows when `threads` > 1 (the process's OpenMP runtime, i.e. the one
PyTorch loaded, is shared). Without AVX2/FMA the portable loops are auto-vectorised.
"""

SOURCE = r"""
#include <stdint.h>
#include <stdlib.h>
#include <string.h>
#if defined(__AVX2__) && defined(__FMA__)
#include <immintrin.h>
#define PK_AVX2 1
#endif
#ifdef _OPENMP
#include <omp.h>
#endif

#define PK_BLOCK 64

int pk_version(void) { return 2; }

int pk_has_avx2(void) {
#ifdef PK_AVX2
  return 1;
#else
  return 0;
#endif
}

int pk_has_openmp(void) {
#ifdef _OPENMP
  return 1;
#else
  return 0;
#endif
}

/* Rows [r0, r1) of one column panel: y (row stride ldy) = bias + W x (x row stride ldx). */
static void panel_rows(int64_t r0, int64_t r1, int64_t M, const int32_t* rowptr,
                      const int32_t* cols, const float* vals, const float* X, int64_t ldx,
                      const float* bias, float* Y, int64_t ldy) {
  for (int64_t r = r0; r < r1; r++) {
    float* y = Y + r * ldy;
    const float b = bias ? bias[r] : 0.0f;
    const int32_t s = rowptr[r], e = rowptr[r + 1];
    int64_t m0 = 0;
#ifdef PK_AVX2
    for (; m0 + 32 <= M; m0 += 32) {
      __m256 a0 = _mm256_set1_ps(b), a1 = a0, a2 = a0, a3 = a0;
      for (int32_t k = s; k < e; k++) {
        const __m256 v = _mm256_broadcast_ss(vals + k);
        const float* x = X + (int64_t)cols[k] * ldx + m0;
        a0 = _mm256_fmadd_ps(v, _mm256_loadu_ps(x), a0);
        a1 = _mm256_fmadd_ps(v, _mm256_loadu_ps(x + 8), a1);
        a2 = _mm256_fmadd_ps(v, _mm256_loadu_ps(x + 16), a2);
        a3 = _mm256_fmadd_ps(v, _mm256_loadu_ps(x + 24), a3);
      }
      _mm256_storeu_ps(y + m0, a0);
      _mm256_storeu_ps(y + m0 + 8, a1);
      _mm256_storeu_ps(y + m0 + 16, a2);
      _mm256_storeu_ps(y + m0 + 24, a3);
    }
    for (; m0 + 8 <= M; m0 += 8) {
      __m256 a0 = _mm256_set1_ps(b);
      for (int32_t k = s; k < e; k++)
        a0 = _mm256_fmadd_ps(_mm256_broadcast_ss(vals + k),
                             _mm256_loadu_ps(X + (int64_t)cols[k] * ldx + m0), a0);
      _mm256_storeu_ps(y + m0, a0);
    }
    if (M == 1 && ldx == 1) {
      int32_t k = s;
      __m256 a0 = _mm256_setzero_ps(), a1 = a0;
      for (; k + 16 <= e; k += 16) {
        const __m256i i0 = _mm256_loadu_si256((const __m256i*)(cols + k));
        const __m256i i1 = _mm256_loadu_si256((const __m256i*)(cols + k + 8));
        a0 = _mm256_fmadd_ps(_mm256_loadu_ps(vals + k), _mm256_i32gather_ps(X, i0, 4), a0);
        a1 = _mm256_fmadd_ps(_mm256_loadu_ps(vals + k + 8), _mm256_i32gather_ps(X, i1, 4), a1);
      }
      if (k + 8 <= e) {
        const __m256i i0 = _mm256_loadu_si256((const __m256i*)(cols + k));
        a1 = _mm256_fmadd_ps(_mm256_loadu_ps(vals + k), _mm256_i32gather_ps(X, i0, 4), a1);
        k += 8;
      }
      if (k < e) { /* the last 1..7 entries: masked loads and gather, nothing read past e */
        const __m256i lane = _mm256_setr_epi32(0, 1, 2, 3, 4, 5, 6, 7);
        const __m256i live = _mm256_cmpgt_epi32(_mm256_set1_epi32(e - k), lane);
        const __m256i i0 = _mm256_maskload_epi32(cols + k, live);
        const __m256 v0 = _mm256_maskload_ps(vals + k, live);
        const __m256 x0 = _mm256_mask_i32gather_ps(_mm256_setzero_ps(), X, i0,
                                                   _mm256_castsi256_ps(live), 4);
        a0 = _mm256_fmadd_ps(v0, x0, a0);
      }
      a0 = _mm256_add_ps(a0, a1);
      __m128 h = _mm_add_ps(_mm256_castps256_ps128(a0), _mm256_extractf128_ps(a0, 1));
      h = _mm_hadd_ps(h, h);
      h = _mm_hadd_ps(h, h);
      const float t = _mm_cvtss_f32(h);
      y[0] = b + t;
      continue;
    }
#endif
    if (m0 < M) {
      for (int64_t m = m0; m < M; m++) y[m] = b;
      for (int32_t k = s; k < e; k++) {
        const float v = vals[k];
        const float* x = X + (int64_t)cols[k] * ldx;
        for (int64_t m = m0; m < M; m++) y[m] += v * x[m];
      }
    }
  }
}

/* Column panels of 32 outer, rows inner: the panel of X every row reads ([K, 32] floats) stays
   in cache, however many columns (im2col positions) there are. */
static void spmm_rows(int64_t r0, int64_t r1, int64_t M, const int32_t* rowptr,
                      const int32_t* cols, const float* vals, const float* X, int64_t ldx,
                      const float* bias, float* Y, int64_t ldy) {
  for (int64_t p0 = 0; p0 < M; p0 += 32) {
    const int64_t width = M - p0 < 32 ? M - p0 : 32;
    panel_rows(r0, r1, width, rowptr, cols, vals, X + p0, ldx, bias, Y + p0, ldy);
  }
}

static void spmm_batch(int64_t B, int64_t R, int64_t M, const int32_t* rowptr,
                       const int32_t* cols, const float* vals, const float* X, int64_t ldx,
                       int64_t sx, const float* bias, float* Y, int64_t ldy, int64_t sy,
                       int threads) {
#ifdef _OPENMP
  /* Small products stay on one thread: waking the others costs more than they would save. */
  const int64_t work = (int64_t)(rowptr[R] - rowptr[0]) * M * B;
  if (threads > 1 && R >= 2 * threads && work >= 32768) {
#pragma omp parallel num_threads(threads)
    {
      const int t = omp_get_thread_num(), n = omp_get_num_threads();
      for (int64_t b = 0; b < B; b++)
        spmm_rows(R * t / n, R * (t + 1) / n, M, rowptr, cols, vals, X + b * sx, ldx, bias,
                  Y + b * sy, ldy);
    }
    return;
  }
#endif
  (void)threads;
  for (int64_t b = 0; b < B; b++)
    spmm_rows(0, R, M, rowptr, cols, vals, X + b * sx, ldx, bias, Y + b * sy, ldy);
}

/* X[b] is [K, M] with row stride ldx and batch stride sx; Y[b] is [R, M] likewise. */
void pk_spmm(int64_t B, int64_t R, int64_t M, const int32_t* rowptr, const int32_t* cols,
             const float* vals, const float* X, int64_t ldx, int64_t sx, const float* bias,
             float* Y, int64_t ldy, int64_t sy, int threads) {
  spmm_batch(B, R, M, rowptr, cols, vals, X, ldx, sx, bias, Y, ldy, sy, threads);
}

#ifdef PK_AVX2
static inline void transpose8(__m256* r) {
  const __m256 t0 = _mm256_unpacklo_ps(r[0], r[1]), t1 = _mm256_unpackhi_ps(r[0], r[1]);
  const __m256 t2 = _mm256_unpacklo_ps(r[2], r[3]), t3 = _mm256_unpackhi_ps(r[2], r[3]);
  const __m256 t4 = _mm256_unpacklo_ps(r[4], r[5]), t5 = _mm256_unpackhi_ps(r[4], r[5]);
  const __m256 t6 = _mm256_unpacklo_ps(r[6], r[7]), t7 = _mm256_unpackhi_ps(r[6], r[7]);
  const __m256 s0 = _mm256_shuffle_ps(t0, t2, _MM_SHUFFLE(1, 0, 1, 0));
  const __m256 s1 = _mm256_shuffle_ps(t0, t2, _MM_SHUFFLE(3, 2, 3, 2));
  const __m256 s2 = _mm256_shuffle_ps(t1, t3, _MM_SHUFFLE(1, 0, 1, 0));
  const __m256 s3 = _mm256_shuffle_ps(t1, t3, _MM_SHUFFLE(3, 2, 3, 2));
  const __m256 s4 = _mm256_shuffle_ps(t4, t6, _MM_SHUFFLE(1, 0, 1, 0));
  const __m256 s5 = _mm256_shuffle_ps(t4, t6, _MM_SHUFFLE(3, 2, 3, 2));
  const __m256 s6 = _mm256_shuffle_ps(t5, t7, _MM_SHUFFLE(1, 0, 1, 0));
  const __m256 s7 = _mm256_shuffle_ps(t5, t7, _MM_SHUFFLE(3, 2, 3, 2));
  r[0] = _mm256_permute2f128_ps(s0, s4, 0x20);
  r[1] = _mm256_permute2f128_ps(s1, s5, 0x20);
  r[2] = _mm256_permute2f128_ps(s2, s6, 0x20);
  r[3] = _mm256_permute2f128_ps(s3, s7, 0x20);
  r[4] = _mm256_permute2f128_ps(s0, s4, 0x31);
  r[5] = _mm256_permute2f128_ps(s1, s5, 0x31);
  r[6] = _mm256_permute2f128_ps(s2, s6, 0x31);
  r[7] = _mm256_permute2f128_ps(s3, s7, 0x31);
}
#endif

/* dst[c, i] = src[i, c] for i < rows (rows <= width), zero for rows <= i < width; width % 8 == 0.
   src is [rows, C] with row stride lds; dst is [C, width]. */
static void pack_transposed(const float* src, int64_t rows, int64_t C, int64_t lds, float* dst,
                            int64_t width) {
  int64_t c0 = 0;
#ifdef PK_AVX2
  for (; c0 + 8 <= C; c0 += 8) {
    for (int64_t i0 = 0; i0 < width; i0 += 8) {
      __m256 r[8];
      for (int j = 0; j < 8; j++)
        r[j] = i0 + j < rows ? _mm256_loadu_ps(src + (i0 + j) * lds + c0) : _mm256_setzero_ps();
      transpose8(r);
      for (int j = 0; j < 8; j++) _mm256_storeu_ps(dst + (c0 + j) * width + i0, r[j]);
    }
  }
#endif
  for (int64_t c = c0; c < C; c++)
    for (int64_t i = 0; i < width; i++) dst[c * width + i] = i < rows ? src[i * lds + c] : 0.0f;
}

/* dst[i, c] = src[c, i] for i < rows; src is [C, width], dst is [rows, C] with row stride ldd. */
static void unpack_transposed(const float* src, int64_t rows, int64_t C, int64_t width,
                              float* dst, int64_t ldd) {
  int64_t c0 = 0;
#ifdef PK_AVX2
  for (; c0 + 8 <= C; c0 += 8) {
    for (int64_t i0 = 0; i0 < rows; i0 += 8) {
      __m256 r[8];
      for (int j = 0; j < 8; j++) r[j] = _mm256_loadu_ps(src + (c0 + j) * width + i0);
      transpose8(r);
      for (int j = 0; j < 8 && i0 + j < rows; j++) _mm256_storeu_ps(dst + (i0 + j) * ldd + c0, r[j]);
    }
  }
#endif
  for (int64_t c = c0; c < C; c++)
    for (int64_t i = 0; i < rows; i++) dst[i * ldd + c] = src[c * width + i];
}

/* Grow-only scratch of the calling thread (kept between calls: no page faults per call). */
static float* scratch_of_thread(int64_t floats) {
  static __thread float* buf = NULL;
  static __thread int64_t cap = 0;
  if (floats > cap) {
    float* grown = (float*)realloc(buf, (size_t)floats * sizeof(float));
    if (!grown) return NULL;
    buf = grown;
    cap = floats;
  }
  return buf;
}

/* y [N, R] = x [N, K] W^T + bias, all row-major. Returns 0, or -1 when out of memory. */
int pk_linear(int64_t N, int64_t K, int64_t R, const int32_t* rowptr, const int32_t* cols,
              const float* vals, const float* x, const float* bias, float* y, int threads) {
  if (N == 1) {
    spmm_batch(1, R, 1, rowptr, cols, vals, x, 1, 0, bias, y, 1, 0, threads);
    return 0;
  }
  float* scratch = scratch_of_thread((K + R) * PK_BLOCK);
  if (!scratch) return -1;
  float* xt = scratch;
  float* yt = scratch + K * PK_BLOCK;
  for (int64_t n0 = 0; n0 < N; n0 += PK_BLOCK) {
    const int64_t rows = N - n0 < PK_BLOCK ? N - n0 : PK_BLOCK;
    const int64_t width = (rows + 7) / 8 * 8;
    pack_transposed(x + n0 * K, rows, K, K, xt, width);
    spmm_batch(1, R, width, rowptr, cols, vals, xt, width, 0, bias, yt, width, 0, threads);
    unpack_transposed(yt, rows, R, width, y + n0 * R, R);
  }
  return 0;
}
"""
