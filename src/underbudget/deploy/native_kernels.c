/* Sparse inference kernels for CPUs: float32, compiled on first use by deploy/native.py.
 *
 * Both kernels touch only the nonzero weights and vectorise over LANES independent outputs,
 * so each nonzero costs one fused multiply-add per LANES outputs:
 *
 * - ub_csr_linear: y = x W^T + b with W in CSR. Examples are taken 16 or 64 at a time,
 *   laid out feature-major (transposed into a per-thread tile unless they already are);
 *   each nonzero W[o, k] then adds W[o, k] * x[k, examples] to row o's outputs, which are
 *   written feature-major too.
 * - ub_sparse_conv2d: a stride-1 convolution computed directly from each output channel's
 *   nonzeros. An image is copied into a zero-padded per-thread buffer whose rows lie end to
 *   end; the output positions of a channel then form one contiguous run over that buffer
 *   (positions that fall between rows are computed and dropped), and each nonzero
 *   (c, i, j) reads the run shifted by its offset c*H*W + i*dil*W + j*dil. A following
 *   ReLU and 2x2 max-pool can be applied as the run is written out (one pass, no
 *   full-size intermediate in memory).
 *
 * Work is split over OpenMP threads (the caller passes torch's thread count).
 */
#include <stdint.h>
#include <stdlib.h>
#include <string.h>

#define LANES 16
#define OUT_BLOCK 32
#define WIDE 4  /* vectors computed side by side */

/* LANES floats as one value: the compiler keeps it in vector registers (GCC/Clang). */
typedef float lanes_t __attribute__((vector_size(LANES * sizeof(float))));

static inline lanes_t load_lanes(const float *p) {
    lanes_t v;
    memcpy(&v, p, sizeof v);
    return v;
}

/* Per-thread work buffers, kept between calls (OpenMP threads persist): a fresh
 * allocation per call would pay page faults that cost more than the product itself. */
enum { BUF_TILE, BUF_IMAGE, BUF_RUN, BUFFERS };
static __thread float *buffers[BUFFERS];
static __thread int64_t capacity[BUFFERS];

static float *work_buffer(int which, int64_t count) {
    if (capacity[which] < count) {
        const int64_t rounded = (count + LANES - 1) / LANES * LANES;
        float *fresh = (float *)aligned_alloc(64, (size_t)rounded * sizeof(float));
        if (!fresh) return NULL;
        free(buffers[which]);
        buffers[which] = fresh;
        capacity[which] = rounded;
    }
    return buffers[which];
}

int ub_abi_version(void) { return 2; }

#if defined(__AVX2__)
#include <immintrin.h>
/* dst[i * ds + j] = src[j * ss + i] for an 8 x 8 block, in registers. */
static inline void transpose8x8(const float *src, int64_t ss, float *dst, int64_t ds) {
    __m256 r[8], t[8], u[8];
    for (int i = 0; i < 8; ++i) r[i] = _mm256_loadu_ps(src + i * ss);
    for (int i = 0; i < 4; ++i) {
        t[2 * i] = _mm256_unpacklo_ps(r[2 * i], r[2 * i + 1]);
        t[2 * i + 1] = _mm256_unpackhi_ps(r[2 * i], r[2 * i + 1]);
    }
    for (int i = 0; i < 2; ++i) {
        u[4 * i] = _mm256_shuffle_ps(t[4 * i], t[4 * i + 2], _MM_SHUFFLE(1, 0, 1, 0));
        u[4 * i + 1] = _mm256_shuffle_ps(t[4 * i], t[4 * i + 2], _MM_SHUFFLE(3, 2, 3, 2));
        u[4 * i + 2] = _mm256_shuffle_ps(t[4 * i + 1], t[4 * i + 3], _MM_SHUFFLE(1, 0, 1, 0));
        u[4 * i + 3] = _mm256_shuffle_ps(t[4 * i + 1], t[4 * i + 3], _MM_SHUFFLE(3, 2, 3, 2));
    }
    for (int i = 0; i < 4; ++i) {
        _mm256_storeu_ps(dst + i * ds, _mm256_permute2f128_ps(u[i], u[i + 4], 0x20));
        _mm256_storeu_ps(dst + (i + 4) * ds, _mm256_permute2f128_ps(u[i], u[i + 4], 0x31));
    }
}
#define BLOCK8 8
#else
#define BLOCK8 0
#endif

/* tile[k, r] = x[r, k] for r < m, zero for m <= r < rows. */
static void transpose_tile(const float *x, int64_t m, int64_t in, int64_t rows,
                           float *tile) {
    int64_t r0 = 0, k_fast = 0;
#if BLOCK8
    k_fast = in / BLOCK8 * BLOCK8;
    for (; r0 + BLOCK8 <= m; r0 += BLOCK8)
        for (int64_t k = 0; k < k_fast; k += BLOCK8)
            transpose8x8(x + r0 * in + k, in, tile + k * rows + r0, rows);
    for (int64_t r = 0; r < r0; ++r)  /* columns past the last full block */
        for (int64_t k = k_fast; k < in; ++k) tile[k * rows + r] = x[r * in + k];
#endif
    for (int64_t k0 = 0; k0 < in; k0 += LANES) {  /* rows past the last full block */
        const int64_t k1 = k0 + LANES < in ? k0 + LANES : in;
        for (int64_t r = r0; r < m; ++r) {
            const float *src = x + r * in;
            for (int64_t k = k0; k < k1; ++k) tile[k * rows + r] = src[k];
        }
    }
    for (int64_t k = 0; k < in; ++k)
        for (int64_t r = m; r < rows; ++r) tile[k * rows + r] = 0.0f;
}

/* Row o of W times `rows` = width * LANES examples laid out feature-major (feature k's
 * values at src + k * ld); the m <= rows results go to y[0 .. m) (contiguous). */
static inline void csr_row(const float *src, int64_t ld, int64_t width,
                           const int32_t *col, const float *val, int32_t begin,
                           int32_t end, float b, float *y, int64_t m) {
    lanes_t acc[WIDE];
    if (width == WIDE) {  /* WIDE independent accumulators: no dependency stalls */
        for (int v = 0; v < WIDE; ++v) acc[v] = (lanes_t){0} + b;
        for (int32_t p = begin; p < end; ++p) {
            const float *x = src + (int64_t)col[p] * ld;
            const float w = val[p];
            for (int v = 0; v < WIDE; ++v) acc[v] += w * load_lanes(x + v * LANES);
        }
    } else {  /* one vector: the nonzeros split over WIDE partial sums */
        for (int v = 0; v < WIDE; ++v) acc[v] = (lanes_t){0};
        int32_t p = begin;
        for (; p + WIDE <= end; p += WIDE)
            for (int v = 0; v < WIDE; ++v)
                acc[v] += val[p + v] * load_lanes(src + (int64_t)col[p + v] * ld);
        for (; p < end; ++p) acc[0] += val[p] * load_lanes(src + (int64_t)col[p] * ld);
        acc[0] = (acc[0] + acc[1]) + (acc[2] + acc[3]) + b;
    }
    memcpy(y, acc, (size_t)m * sizeof(float));
}

/* y (out, n), feature-major, = W x + bias for x given as (n, in) row-major
 * (feature_major = 0) or as (in, n) (feature_major = 1). Feature-major in and out lets
 * a chain of sparse layers run without transposing activations in between. */
int ub_csr_linear(const float *x, int64_t n, int64_t in, int feature_major,
                  const int32_t *crow, const int32_t *col, const float *val, int64_t out,
                  const float *bias, float *y, int threads) {
    const int64_t width = n > LANES ? WIDE : 1;  /* vectors per tile */
    const int64_t rows = width * LANES;           /* examples per tile */
    const int64_t tiles = (n + rows - 1) / rows;
    const int64_t blocks = (out + OUT_BLOCK - 1) / OUT_BLOCK;
    int failed = 0;
#pragma omp parallel num_threads(threads)
    {
        float *tile = work_buffer(BUF_TILE, in * rows);
        int64_t loaded = -1;
        if (!tile) {
#pragma omp atomic write
            failed = 1;
        }
#pragma omp for schedule(static)
        for (int64_t it = 0; it < tiles * blocks; ++it) {
            if (!tile) continue;
            const int64_t t = it / blocks, blk = it % blocks;
            const int64_t b0 = t * rows;
            const int64_t m = n - b0 < rows ? n - b0 : rows;
            const float *src = tile;
            int64_t ld = rows;
            if (feature_major && m == rows) {  /* read the examples in place */
                src = x + b0;
                ld = n;
            } else if (t != loaded) {
                if (feature_major)
                    for (int64_t k = 0; k < in; ++k) {
                        memcpy(tile + k * rows, x + k * n + b0, (size_t)m * sizeof(float));
                        memset(tile + k * rows + m, 0, (size_t)(rows - m) * sizeof(float));
                    }
                else
                    transpose_tile(x + b0 * in, m, in, rows, tile);
                loaded = t;
            }
            const int64_t o_end = (blk + 1) * OUT_BLOCK < out ? (blk + 1) * OUT_BLOCK : out;
            for (int64_t o = blk * OUT_BLOCK; o < o_end; ++o)
                csr_row(src, ld, width, col, val, crow[o], crow[o + 1],
                        bias ? bias[o] : 0.0f, y + o * n + b0, m);
        }
    }
    return failed;
}

int ub_sparse_conv2d(const float *x, int64_t n, int64_t c, int64_t h, int64_t w,
                     int64_t pad_top, int64_t pad_left, int64_t ph, int64_t pw,
                     const int32_t *crow, const int64_t *off, const float *val, int64_t out,
                     const float *bias, int64_t oh, int64_t ow, int64_t extra, int relu,
                     int pool, float *y, int threads) {
    const int64_t plane = ph * pw;
    const int64_t span = (oh * pw + LANES - 1) / LANES * LANES;
    const int64_t buffer = c * plane + extra;
    int failed = 0;
#pragma omp parallel num_threads(threads)
    {
        float *image = work_buffer(BUF_IMAGE, buffer);
        float *run = work_buffer(BUF_RUN, span);
        int64_t loaded = -1;
        if (!image || !run) {
#pragma omp atomic write
            failed = 1;
        } else {
            memset(image, 0, (size_t)buffer * sizeof(float));
        }
#pragma omp for schedule(static)
        for (int64_t it = 0; it < n * out; ++it) {
            if (!image || !run) continue;
            const int64_t b = it / out, o = it % out;
            if (b != loaded) {  /* the borders stay zero: only the interior is written */
                for (int64_t ci = 0; ci < c; ++ci)
                    for (int64_t r = 0; r < h; ++r)
                        memcpy(image + ci * plane + (r + pad_top) * pw + pad_left,
                               x + ((b * c + ci) * h + r) * w, (size_t)w * sizeof(float));
                loaded = b;
            }
            const float bo = bias ? bias[o] : 0.0f;
            int64_t q = 0;
            for (; q + WIDE * LANES <= span; q += WIDE * LANES) {
                lanes_t acc[WIDE];
                for (int v = 0; v < WIDE; ++v) acc[v] = (lanes_t){0} + bo;
                for (int32_t p = crow[o]; p < crow[o + 1]; ++p) {
                    const float *src = image + off[p] + q;
                    const float w = val[p];
                    for (int v = 0; v < WIDE; ++v) acc[v] += w * load_lanes(src + v * LANES);
                }
                memcpy(run + q, acc, sizeof acc);
            }
            for (; q < span; q += LANES) {
                lanes_t acc = (lanes_t){0} + bo;
                for (int32_t p = crow[o]; p < crow[o + 1]; ++p)
                    acc += val[p] * load_lanes(image + off[p] + q);
                memcpy(run + q, &acc, sizeof acc);
            }
            if (pool) {  /* 2x2 max-pool (floor), then ReLU if asked: max commutes with it */
                const int64_t qh = oh / 2, qw = ow / 2;
                float *dst = y + (b * out + o) * qh * qw;
                for (int64_t r = 0; r < qh; ++r) {
                    const float *top = run + 2 * r * pw, *low = top + pw;
                    for (int64_t j = 0; j < qw; ++j) {
                        float m = top[2 * j] > top[2 * j + 1] ? top[2 * j] : top[2 * j + 1];
                        m = low[2 * j] > m ? low[2 * j] : m;
                        m = low[2 * j + 1] > m ? low[2 * j + 1] : m;
                        dst[r * qw + j] = relu && m < 0.0f ? 0.0f : m;
                    }
                }
            } else {
                float *dst = y + (b * out + o) * oh * ow;
                for (int64_t r = 0; r < oh; ++r) {
                    if (relu)
                        for (int64_t j = 0; j < ow; ++j)
                            dst[r * ow + j] = run[r * pw + j] < 0.0f ? 0.0f : run[r * pw + j];
                    else
                        memcpy(dst + r * ow, run + r * pw, (size_t)ow * sizeof(float));
                }
            }
        }
    }
    return failed;
}
