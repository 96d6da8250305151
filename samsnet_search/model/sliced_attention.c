/* Sliced attention on CPU with its Q/K/V projection, forward and backward, vectorized across
 * frequency bins.
 *
 * Built on first use by cpu_attention.py (cc -O3 -march=native) and called through ctypes.
 * Layouts (float32, C order; i = ceil(T / L) slices, NB = ceil(F / BLK) blocks of bins):
 *   x      (B, T, d, F)            the module's input, bins innermost (FrameLayerNorm's layout)
 *   w, b   (3 h d, d), (3 h d)     the 1x1 Q/K/V convolution, output maps ordered (q|k|v, head, map)
 *   out    (B, F, T, h, d)         the heads' output, channels-last for W^O
 *   probs  (B, i, h, NB, L, L, BLK) softmax probabilities of each slice and block of bins (kept for
 *                                   backward; NULL in forward when no gradient is needed)
 * Work items are (batch, slice) pairs [start, stop); a block of BLK bins of one slice is loaded
 * once, projected for each head in cache (q, k, v never go to memory) and attended. Every
 * compute loop runs over BLK contiguous bins (a compile-time trip count, so the compiler fills
 * the SIMD lanes); the last block is zero-padded in scratch and only its real bins are written.
 */
#include <math.h>
#include <stdint.h>
#include <stdlib.h>
#include <string.h>

#ifndef BLK
#error "BLK (bins per block) is set by cpu_attention.py: cc -DBLK=..."
#endif

typedef int64_t i64;

/* Explicit vector types: the auto-vectorizer left the softmax scalar (a select, and a float
 * built from integer bits) and reloaded accumulators it could not prove unaliased. */
typedef float vf __attribute__((vector_size(64)));
typedef int32_t vi __attribute__((vector_size(64)));
#define VW 16         /* floats per vf */
#define NV (BLK / VW) /* vf per block of bins */

static inline vf vmax(vf a, vf b) {
    vi a_wins = a > b;
    return (vf)(((vi)a & a_wins) | ((vi)b & ~a_wins));
}

static inline float hsum(vf a) {
    float s = 0.0f;
    for (int k = 0; k < VW; k++) s += a[k];
    return s;
}

/* exp(x) for x <= 0: Cephes expf (Cody-Waite reduction, degree-6 polynomial, ~1e-7 relative
 * error) with 2^k from its exponent bits; below -87 it is clamped (exp(-87) ~ 1.6e-38). */
static inline vf vexp_neg(vf x) {
    x = vmax(x, x * 0.0f - 87.0f);
    vf t = x * 1.44269504088896341f + 0.5f;
    vi k = __builtin_convertvector(t, vi); /* truncates: one too high where t < 0 is fractional */
    k += (vi)(__builtin_convertvector(k, vf) > t);
    vf kf = __builtin_convertvector(k, vf);
    vf r = x - kf * 0.693359375f - kf * -2.12194440e-4f;
    vf p = r * 1.9875691500e-4f + 1.3981999507e-3f;
    p = p * r + 8.3334519073e-3f;
    p = p * r + 4.1665795894e-2f;
    p = p * r + 1.6666665459e-1f;
    p = p * r + 5.0000001201e-1f;
    return (p * r * r + r + 1.0f) * (vf)((k + 127) << 23);
}

typedef struct {
    i64 B, T, h, d, F, L, i, nb;
} Shape;

static Shape shape_of(i64 B, i64 T, i64 h, i64 d, i64 F, i64 L) {
    Shape s = {B, T, h, d, F, L, (T + L - 1) / L, (F + BLK - 1) / BLK};
    return s;
}

static inline i64 x_at(const Shape *s, i64 b, i64 t, i64 c) { return ((b * s->T + t) * s->d + c) * s->F; }

static inline i64 out_at(const Shape *s, i64 b, i64 f, i64 t, i64 hd) {
    return ((b * s->F + f) * s->T + t) * s->h * s->d + hd * s->d;
}

static inline i64 probs_at(const Shape *s, i64 b, i64 j, i64 hd, i64 blk) {
    return (((b * s->i + j) * s->h + hd) * s->nb + blk) * s->L * s->L * BLK;
}

/* 64-byte aligned scratch of n floats (aligned_alloc wants a multiple of the alignment). */
static float *scratch(i64 n) { return aligned_alloc(64, (n * sizeof(float) + 63) / 64 * 64); }

/* xs[l][c][:] = x's block of bins for the slice's n frames, zero past the last bin. */
static void load_x(const Shape *s, const float *x, i64 b, i64 t0, i64 n, i64 f0, i64 fn, float *xs) {
    for (i64 l = 0; l < n; l++)
        for (i64 c = 0; c < s->d; c++) {
            float *row = xs + (l * s->d + c) * BLK;
            memcpy(row, x + x_at(s, b, t0 + l, c) + f0, fn * sizeof(float));
            memset(row + fn, 0, (BLK - fn) * sizeof(float));
        }
}

/* Q, K and V of head hd for the block: qkv[which][l][c] = bias[o] + sum_c' w[o][c'] xs[l][c'],
 * o the map c of (which, hd); the three are consecutive (L, d, BLK) planes. */
static void project(const Shape *s, const float *w, const float *bias, const vf *xs, i64 n, i64 hd, vf *qkv) {
    i64 d = s->d;
    for (i64 which = 0; which < 3; which++) {
        i64 o0 = (which * s->h + hd) * d;
        vf *dst = qkv + which * s->L * d * NV;
        for (i64 l = 0; l < n; l++)
            for (i64 c = 0; c < d; c++) {
                const float *wo = w + (o0 + c) * d;
                vf a[NV];
                for (int v = 0; v < NV; v++) a[v] = xs[0] * 0.0f + bias[o0 + c];
                for (i64 c2 = 0; c2 < d; c2++)
                    for (int v = 0; v < NV; v++) a[v] += wo[c2] * xs[(l * d + c2) * NV + v];
                for (int v = 0; v < NV; v++) dst[(l * d + c) * NV + v] = a[v];
            }
    }
}

/* Real bins of block blk (the last block of F is partly padding). */
static inline i64 bins_in(const Shape *s, i64 blk) { return s->F - blk * BLK < BLK ? s->F - blk * BLK : BLK; }

static void item(const Shape *s, i64 index, i64 *b, i64 *j, i64 *t0, i64 *n) {
    *b = index / s->i;
    *j = index % s->i;
    *t0 = *j * s->L;
    *n = s->T - *t0 < s->L ? s->T - *t0 : s->L;
}

/* Softmax attention of one block: scores of every query against the n keys, softmax over the
 * keys per bin, values; probabilities to pv (if not NULL), output to out. */
static void attend(const Shape *s, const vf *q, const vf *k, const vf *v, vf *sc, float *o, float scale, i64 b,
                   i64 t0, i64 n, i64 hd, i64 f0, i64 fn, vf *pv, float *out) {
    i64 d = s->d, L = s->L;
    for (i64 l = 0; l < n; l++) {
        const vf *ql = q + l * d * NV;
        for (i64 m = 0; m < n; m++) {
            const vf *km = k + m * d * NV;
            vf a[NV] = {0};
            for (i64 c = 0; c < d; c++)
                for (int w = 0; w < NV; w++) a[w] += ql[c * NV + w] * km[c * NV + w];
            for (int w = 0; w < NV; w++) sc[m * NV + w] = a[w] * scale;
        }
        for (int w = 0; w < NV; w++) {
            vf top = sc[w], sum = top * 0.0f;
            for (i64 m = 1; m < n; m++) top = vmax(top, sc[m * NV + w]);
            for (i64 m = 0; m < n; m++) sum += sc[m * NV + w] = vexp_neg(sc[m * NV + w] - top);
            vf inv = 1.0f / sum;
            for (i64 m = 0; m < n; m++) sc[m * NV + w] *= inv;
        }
        if (pv) memcpy(pv + l * L * NV, sc, n * BLK * sizeof(float));
        for (i64 c = 0; c < d; c++) {
            vf a[NV] = {0};
            for (i64 m = 0; m < n; m++)
                for (int w = 0; w < NV; w++) a[w] += sc[m * NV + w] * v[(m * d + c) * NV + w];
            memcpy(o, a, sizeof a);
            for (i64 f = 0; f < fn; f++) out[out_at(s, b, f0 + f, t0 + l, hd) + c] = o[f];
        }
    }
}

int samsnet_attention_forward(const float *x, const float *w, const float *bias, float *out, float *probs,
                              float scale, i64 B, i64 T, i64 h, i64 d, i64 F, i64 L, i64 start, i64 stop) {
    Shape s = shape_of(B, T, h, d, F, L);
    i64 plane = L * d * BLK;
    float *xs = scratch(4 * plane + L * BLK + BLK);
    if (!xs) return 1;
    vf *q = (vf *)(xs + plane), *k = q + plane / VW, *v = k + plane / VW, *sc = v + plane / VW;
    float *o = (float *)(sc + L * NV);
    for (i64 index = start; index < stop; index++) {
        i64 b, j, t0, n;
        item(&s, index, &b, &j, &t0, &n);
        for (i64 blk = 0; blk < s.nb; blk++) {
            i64 f0 = blk * BLK, fn = bins_in(&s, blk);
            load_x(&s, x, b, t0, n, f0, fn, xs);
            for (i64 hd = 0; hd < h; hd++) {
                project(&s, w, bias, (vf *)xs, n, hd, q); /* q, k, v */
                vf *pv = probs ? (vf *)(probs + probs_at(&s, b, j, hd, blk)) : 0;
                attend(&s, q, k, v, sc, o, scale, b, t0, n, hd, f0, fn, pv, out);
            }
        }
    }
    free(xs);
    return 0;
}

/* Gradients of one head's block: dq, dk, dv (n, d, BLK) from the output gradient go. Two
 * passes, so that no gradient is read and written back per (query, key) pair: by query, dS
 * (kept, n x n) and dQ; by key, dK and dV with their accumulators in registers. */
static void attend_backward(const Shape *s, const vf *q, const vf *k, const vf *v, const vf *go, const vf *pv,
                            const float *out, float scale, i64 b, i64 t0, i64 n, i64 hd, i64 f0, i64 fn, vf *ds,
                            vf *dq, vf *dk, vf *dv) {
    i64 d = s->d, L = s->L;
    for (i64 l = 0; l < n; l++) {
        const vf *gol = go + l * d * NV, *pl = pv + l * L * NV;
        vf *dsl = ds + l * L * NV;
        float delta[BLK] __attribute__((aligned(64))) = {0}; /* rowsum(dP * P) = rowsum(dO * O) */
        for (i64 f = 0; f < fn; f++) {
            const float *ob = out + out_at(s, b, f0 + f, t0 + l, hd);
            for (i64 c = 0; c < d; c++) delta[f] += ((const float *)gol)[c * BLK + f] * ob[c];
        }
        const vf *deltav = (const vf *)delta;
        for (i64 m = 0; m < n; m++) { /* dS = P * (dO V^T - delta) * scale */
            const vf *vm = v + m * d * NV, *pm = pl + m * NV;
            vf a[NV] = {0};
            for (i64 c = 0; c < d; c++)
                for (int w = 0; w < NV; w++) a[w] += gol[c * NV + w] * vm[c * NV + w];
            for (int w = 0; w < NV; w++) dsl[m * NV + w] = pm[w] * (a[w] - deltav[w]) * scale;
        }
        for (i64 c = 0; c < d; c++) { /* dQ = dS K */
            vf a[NV] = {0};
            for (i64 m = 0; m < n; m++)
                for (int w = 0; w < NV; w++) a[w] += dsl[m * NV + w] * k[(m * d + c) * NV + w];
            for (int w = 0; w < NV; w++) dq[(l * d + c) * NV + w] = a[w];
        }
    }
    for (i64 m = 0; m < n; m++) /* dK = dS^T Q, dV = P^T dO */
        for (i64 c = 0; c < d; c++) {
            vf ak[NV] = {0}, av[NV] = {0};
            for (i64 l = 0; l < n; l++) {
                const vf *dslm = ds + (l * L + m) * NV, *plm = pv + (l * L + m) * NV;
                const vf *qlc = q + (l * d + c) * NV, *golc = go + (l * d + c) * NV;
                for (int w = 0; w < NV; w++) {
                    ak[w] += dslm[w] * qlc[w];
                    av[w] += plm[w] * golc[w];
                }
            }
            for (int w = 0; w < NV; w++) {
                dk[(m * d + c) * NV + w] = ak[w];
                dv[(m * d + c) * NV + w] = av[w];
            }
        }
}

/* Through the projection (dqkv: the consecutive dq, dk, dv planes of head hd): dxs += w^T dqkv,
 * dw += dqkv xs^T, db += dqkv (lanes summed, double).
 * Every sum runs in registers over its inner index; dxs is read and written once per entry. */
static void project_backward(const Shape *s, const float *w, const vf *xs, const vf *dqkv, i64 n, i64 hd, vf *dxs,
                             double *dw, double *db) {
    i64 d = s->d;
    for (i64 which = 0; which < 3; which++) {
        i64 o0 = (which * s->h + hd) * d;
        const vf *g = dqkv + which * s->L * d * NV;
        for (i64 l = 0; l < n; l++)
            for (i64 c2 = 0; c2 < d; c2++) {
                vf a[NV] = {0};
                for (i64 c = 0; c < d; c++)
                    for (int v = 0; v < NV; v++) a[v] += w[(o0 + c) * d + c2] * g[(l * d + c) * NV + v];
                for (int v = 0; v < NV; v++) dxs[(l * d + c2) * NV + v] += a[v];
            }
        for (i64 c = 0; c < d; c++) {
            vf gb = g[0] * 0.0f;
            for (i64 l = 0; l < n; l++)
                for (int v = 0; v < NV; v++) gb += g[(l * d + c) * NV + v];
            db[o0 + c] += hsum(gb);
            for (i64 c2 = 0; c2 < d; c2++) {
                vf a = g[0] * 0.0f;
                for (i64 l = 0; l < n; l++)
                    for (int v = 0; v < NV; v++) a += g[(l * d + c) * NV + v] * xs[(l * d + c2) * NV + v];
                dw[(o0 + c) * d + c2] += hsum(a);
            }
        }
    }
}

/* dw (3hd, d) and db (3hd) are this call's own partial sums (double), added to by it. */
int samsnet_attention_backward(const float *x, const float *w, const float *bias, const float *out,
                               const float *probs, const float *grad_out, float *dx, double *dw, double *db,
                               float scale, i64 B, i64 T, i64 h, i64 d, i64 F, i64 L, i64 start, i64 stop) {
    Shape s = shape_of(B, T, h, d, F, L);
    i64 plane = L * d * BLK;
    float *xs = scratch(9 * plane + L * L * BLK);
    if (!xs) return 1;
    vf *q = (vf *)(xs + plane), *k = q + plane / VW, *v = k + plane / VW, *go = v + plane / VW;
    vf *dq = go + plane / VW, *dk = dq + plane / VW, *dv = dk + plane / VW, *dxs = dv + plane / VW;
    vf *ds = dxs + plane / VW; /* (L, L, BLK) */
    for (i64 index = start; index < stop; index++) {
        i64 b, j, t0, n;
        item(&s, index, &b, &j, &t0, &n);
        for (i64 blk = 0; blk < s.nb; blk++) {
            i64 f0 = blk * BLK, fn = bins_in(&s, blk);
            load_x(&s, x, b, t0, n, f0, fn, xs);
            memset(dxs, 0, n * d * BLK * sizeof(float));
            for (i64 hd = 0; hd < h; hd++) {
                project(&s, w, bias, (vf *)xs, n, hd, q); /* q, k, v */
                memset(go, 0, n * d * BLK * sizeof(float));
                for (i64 l = 0; l < n; l++)
                    for (i64 f = 0; f < fn; f++) {
                        const float *g = grad_out + out_at(&s, b, f0 + f, t0 + l, hd);
                        for (i64 c = 0; c < d; c++) ((float *)go)[(l * d + c) * BLK + f] = g[c];
                    }
                const vf *pv = (const vf *)(probs + probs_at(&s, b, j, hd, blk));
                attend_backward(&s, q, k, v, go, pv, out, scale, b, t0, n, hd, f0, fn, ds, dq, dk, dv);
                project_backward(&s, w, (vf *)xs, dq, n, hd, dxs, dw, db); /* dq, dk, dv */
            }
            for (i64 l = 0; l < n; l++)
                for (i64 c = 0; c < d; c++)
                    memcpy(dx + x_at(&s, b, t0 + l, c) + f0, (float *)dxs + (l * d + c) * BLK, fn * sizeof(float));
        }
    }
    free(xs);
    return 0;
}
