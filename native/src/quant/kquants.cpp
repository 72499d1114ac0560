// Quantizers of the k-quants q2_K .. q6_K (256-element super-blocks).
// Per super-block two candidates are built: sub-block scales (and mins) fitted with the
// reference weighting (|x|-based, or importance-based when an imatrix is given) and quantized to
// integers by plain rounding against the largest, or fitted with the objective weights and
// quantized by a weighted scale search. Each candidate is then refined with its stored f16
// values: a local search of every sub-block's integer scale/min (levels re-chosen by rounding),
// and a least-squares refit of the f16 super-scales; the better candidate goes on for more
// rounds, and its final levels are chosen exactly. The result lowers
// sum_j w_j (x_j - deq_j)^2 (w: importance weights, or the prior sqrt(sigma2 + x^2) of
// qsearch.h without them).
#include <cmath>
#include <cstring>
#include <limits>

#include "quant/kfit.h"
#include "quant/qsearch.h"
#include "quant/rows.h"

namespace edgellm::quant {

namespace {

// Level sums of one sub-block (n = 16 or 32) for the least-squares refit of the super-scales.
struct SubSums {
    double w, wx, wq, wqq, wxq;  // sum w, w*x, w*q, w*q^2, w*x*q
};

SubSums sub_sums(const float* x, const float* w, const int8_t* L, int n) {
    float aw[kLanes] = {}, awx[kLanes] = {}, awq[kLanes] = {}, awqq[kLanes] = {}, awxq[kLanes] = {};
    for (int i0 = 0; i0 < n; i0 += kLanes)
        for (int l = 0; l < kLanes; ++l) {
            const float q = L[i0 + l], wi = w[i0 + l], xi = x[i0 + l];
            aw[l] += wi;
            awx[l] += wi * xi;
            awq[l] += wi * q;
            awqq[l] += wi * q * q;
            awxq[l] += wi * xi * q;
        }
    return {lane_sum(aw), lane_sum(awx), lane_sum(awq), lane_sum(awqq), lane_sum(awxq)};
}

// Rounds of scale search and super-scale refit: kRounds for each candidate, then the better one
// goes on up to kRoundsBest.
constexpr int kRounds = 3, kRoundsBest = 5;

// ---- q2_K / q4_K / q5_K: deq = (d*sc)*q - (dmin*mn), q in [0, nmax], sc, mn in [0, smax] ----

struct AsymSpec {
    int sub;                 // elements per sub-block
    int nmax;                // levels 0..nmax
    int smax;                // integer scales and mins 0..smax
    float rmin, rdelta;      // reference sub-block sweep (see fit_scale_min)
    int nstep;
    bool use_mad;
    bool ref_av;             // reference weights av_x + |x| (else |x|)
    float sigma_mul;         // importance weighting: imatrix * sqrt(sigma_mul * mean(x^2) + x^2)
    int radius;              // local search radius of the integer scales
    float obj_rdelta;        // objective-weighted sweep: -0.9 + obj_rdelta*k, k = 0..obj_nstep
    int obj_nstep;
};

struct AsymBlock {
    uint16_t hd = 0, hm = 0;  // f16 super-scale and super-min
    uint8_t sc[16] = {}, mn[16] = {};
    int8_t L[kQK] = {};
    double err = 0;
    float sub_err[16] = {};  // error of each sub-block with the current values
    bool sub_known = false;  // sub_err and L match the current values
};

constexpr AsymSpec kQ2K{16, 3, 15, -0.5f, 0.1f, 15, true, false, 1.0f, 1, 0.2f, 9};
constexpr AsymSpec kQ4K{32, 15, 63, -1.0f, 0.1f, 20, false, true, 2.0f, 1, 0.05f, 36};
constexpr AsymSpec kQ5K{32, 31, 63, -0.5f, 0.1f, 15, false, true, 2.0f, 1, 0.05f, 36};

// Integer scales from float ones: round against max/smax (plain) or a weighted search.
float quantize_scales(const float* v, int n, int smax, const float* sw, bool search, uint8_t* out) {
    if (search) return fit_scale_pos(v, n, smax, sw, out);
    float vmax = 0;
    for (int j = 0; j < n; ++j) vmax = std::max(vmax, v[j]);
    const float inv = vmax > 0 ? static_cast<float>(smax) / vmax : 0.0f;
    for (int j = 0; j < n; ++j) out[j] = static_cast<uint8_t>(std::clamp(nearest_int(inv * v[j]), 0, smax));
    return vmax / static_cast<float>(smax);
}

// Sub-block-wise local search of (sc, mn) around the current values, levels re-chosen exactly;
// sets b.L and b.err. w: objective weights.
void search_asym_scales(const float* x, const float* w, const AsymSpec& sp, AsymBlock& b) {
    const int nsub = kQK / sp.sub;
    const int R = sp.radius;
    int8_t tmp[32];
    const float d = fp16_to_fp32(b.hd), dm = fp16_to_fp32(b.hm);
    double total = 0;
    for (int j = 0; j < nsub; ++j) {
        const float* xj = x + j * sp.sub;
        const float* wj = w + j * sp.sub;
        // the current values, when already scored, need not be fitted again
        float best = b.sub_known ? b.sub_err[j] : std::numeric_limits<float>::infinity();
        const int sc0 = b.sc[j], mn0 = b.mn[j];
        for (int s = std::max(0, sc0 - R); s <= std::min(sp.smax, sc0 + R); ++s)
            for (int m = std::max(0, mn0 - R); m <= std::min(sp.smax, mn0 + R); ++m) {
                if (b.sub_known && s == sc0 && m == mn0) continue;
                const float dl = d * static_cast<float>(s), ml = dm * static_cast<float>(m);
                const float e = fit_levels_rounded(xj, wj, sp.sub, dl, ml, 0, sp.nmax, tmp);
                if (e < best) {
                    best = e;
                    b.sc[j] = static_cast<uint8_t>(s);
                    b.mn[j] = static_cast<uint8_t>(m);
                    std::memcpy(b.L + j * sp.sub, tmp, sp.sub);
                }
            }
        b.sub_err[j] = best;
        total += best;
    }
    b.err = total;
    b.sub_known = true;
}

// Least-squares refit of the f16 super-scales (d, dmin) for the current integer scales and
// levels; keeps it (levels re-chosen) when the error drops. Returns whether it did.
bool refit_asym_supers(const float* x, const float* w, const AsymSpec& sp, AsymBlock& b) {
    const int nsub = kQK / sp.sub;
    const float d = fp16_to_fp32(b.hd), dm = fp16_to_fp32(b.hm);
    // x ~ d*a - dmin*c with a = sc*q, c = mn: 2x2 weighted normal equations.
    double saa = 0, sac = 0, scc = 0, sxa = 0, sxc = 0;
    for (int j = 0; j < nsub; ++j) {
        const SubSums u = sub_sums(x + j * sp.sub, w + j * sp.sub, b.L + j * sp.sub, sp.sub);
        const double sc = b.sc[j], mn = b.mn[j];
        saa += sc * sc * u.wqq;
        sac += sc * mn * u.wq;
        scc += mn * mn * u.w;
        sxa += sc * u.wxq;
        sxc += mn * u.wx;
    }
    double nd = d, ndm = dm;
    const double det = saa * scc - sac * sac;
    if (scc > 0 && det > 0) {
        nd = (sxa * scc - sac * sxc) / det;
        ndm = -(saa * sxc - sac * sxa) / det;
    } else if (saa > 0) {
        nd = (sxa + dm * sac) / saa;
    } else {
        return false;
    }
    const uint16_t hd = fp32_to_fp16_sat(static_cast<float>(nd)), hm = fp32_to_fp16_sat(static_cast<float>(ndm));
    if (hd == b.hd && hm == b.hm) return false;
    const float d2 = fp16_to_fp32(hd), dm2 = fp16_to_fp32(hm);
    double e2 = 0;
    int8_t L2[kQK];
    float sub_err[16];
    for (int j = 0; j < nsub; ++j) {
        sub_err[j] = fit_levels_rounded(x + j * sp.sub, w + j * sp.sub, sp.sub, d2 * static_cast<float>(b.sc[j]),
                                        dm2 * static_cast<float>(b.mn[j]), 0, sp.nmax, L2 + j * sp.sub);
        e2 += sub_err[j];
    }
    if (!(e2 < b.err)) return false;
    b.hd = hd;
    b.hm = hm;
    std::memcpy(b.L, L2, kQK);
    std::memcpy(b.sub_err, sub_err, sizeof sub_err);
    b.err = e2;
    return true;
}

// Rounds [from, to) of the refinement (3 in all): a scale search, preceded from round 1 on by a
// refit of the super-scales; stops when the refit no longer helps.
void refine_asym(const float* x, const float* w, const AsymSpec& sp, AsymBlock& b, int from, int to) {
    for (int round = from; round < to; ++round) {
        if (round > 0 && !refit_asym_supers(x, w, sp, b)) break;
        search_asym_scales(x, w, sp, b);
    }
}

void quantize_superblock_asym(const float* x, const float* imat, const AsymSpec& sp, AsymBlock& out) {
    const int nsub = kQK / sp.sub;
    float wf[kQK], scales[16], mins[16], sw[16];
    float sumx2 = 0;
    for (int i = 0; i < kQK; ++i) sumx2 += x[i] * x[i];
    if (imat) {
        const float sigma2 = sp.sigma_mul * sumx2 / kQK;
        for (int i = 0; i < kQK; ++i) wf[i] = imat[i] * std::sqrt(sigma2 + x[i] * x[i]);
    } else {
        for (int j = 0; j < nsub; ++j) {
            float s = 0;
            for (int l = 0; l < sp.sub; ++l) s += x[j * sp.sub + l] * x[j * sp.sub + l];
            const float av = sp.ref_av ? std::sqrt(s / sp.sub) : 0.0f;
            for (int l = 0; l < sp.sub; ++l) wf[j * sp.sub + l] = av + std::fabs(x[j * sp.sub + l]);
        }
    }
    float wobj[kQK];  // objective weights
    if (imat) std::memcpy(wobj, imat, sizeof wobj);
    else prior_weights(x, kQK, sumx2 / kQK, wobj);
    out.err = std::numeric_limits<double>::infinity();
    // Two candidates: the reference one (reference weights and sweep, scales rounded against the
    // largest), and one fitted to the objective weights with its own sweep and a scale search.
    for (const bool ref : {true, false}) {
        const float* fw = ref ? wf : wobj;
        for (int j = 0; j < nsub; ++j) {
            const float* xj = x + j * sp.sub;
            scales[j] = ref ? fit_scale_min(xj, fw + j * sp.sub, sp.sub, sp.nmax, sp.rmin, sp.rdelta, sp.nstep,
                                            sp.use_mad, mins[j])
                            : fit_scale_min(xj, fw + j * sp.sub, sp.sub, sp.nmax, -0.9f, sp.obj_rdelta,
                                            sp.obj_nstep, false, mins[j]);
            sw[j] = 0;
            for (int l = 0; l < sp.sub; ++l) sw[j] += fw[j * sp.sub + l];
        }
        AsymBlock b;
        b.hd = fp32_to_fp16_sat(quantize_scales(scales, nsub, sp.smax, sw, !ref, b.sc));
        b.hm = fp32_to_fp16_sat(quantize_scales(mins, nsub, sp.smax, sw, !ref, b.mn));
        refine_asym(x, wobj, sp, b, 0, kRounds);
        if (b.err < out.err) out = b;
    }
    refine_asym(x, wobj, sp, out, kRounds, kRoundsBest);  // the better one goes on
    // The searches round the quotient; choose the final levels exactly.
    const float d = fp16_to_fp32(out.hd), dm = fp16_to_fp32(out.hm);
    for (int j = 0; j < nsub; ++j)
        fit_levels(x + j * sp.sub, wobj + j * sp.sub, sp.sub, d * static_cast<float>(out.sc[j]),
                   dm * static_cast<float>(out.mn[j]), 0, sp.nmax, out.L + j * sp.sub);
}

// ---- q3_K / q6_K: deq = (d*sc)*q, q in [lo, hi], sc in [-sn, sn-1], sub-blocks of 16 ----

struct SymSpec {
    int lo, hi;        // levels
    int sn;            // integer scales in [-sn, sn-1]
    bool imat_sigma;   // importance weighting: imatrix * sqrt(2*mean(x^2) + x^2) (else imatrix)
    int radius;
};

struct SymBlock {
    uint16_t hd = 0;
    int sc[16] = {};
    int8_t L[kQK] = {};
    double err = 0;
    float sub_err[16] = {};  // as in AsymBlock
    bool sub_known = false;
};

constexpr SymSpec kQ3K{-4, 3, 32, true, 2};
constexpr SymSpec kQ6K{-32, 31, 128, false, 2};

// Sub-block-wise local search of the integer scales (see search_asym_scales).
void search_sym_scales(const float* x, const float* w, const SymSpec& sp, SymBlock& b) {
    int8_t tmp[16];
    const float d = fp16_to_fp32(b.hd);
    double total = 0;
    for (int j = 0; j < 16; ++j) {
        const float* xj = x + 16 * j;
        const float* wj = w + 16 * j;
        float best = b.sub_known ? b.sub_err[j] : std::numeric_limits<float>::infinity();
        const int s0 = b.sc[j];
        for (int s = std::max(-sp.sn, s0 - sp.radius); s <= std::min(sp.sn - 1, s0 + sp.radius); ++s) {
            if (b.sub_known && s == s0) continue;
            const float e = fit_levels_rounded(xj, wj, 16, d * static_cast<float>(s), 0.0f, sp.lo, sp.hi, tmp);
            if (e < best) {
                best = e;
                b.sc[j] = s;
                std::memcpy(b.L + 16 * j, tmp, 16);
            }
        }
        b.sub_err[j] = best;
        total += best;
    }
    b.err = total;
    b.sub_known = true;
}

// Least-squares refit of the f16 super-scale d (see refit_asym_supers).
bool refit_sym_super(const float* x, const float* w, const SymSpec& sp, SymBlock& b) {
    double saa = 0, sxa = 0;
    for (int j = 0; j < 16; ++j) {
        const SubSums u = sub_sums(x + 16 * j, w + 16 * j, b.L + 16 * j, 16);
        const double sc = b.sc[j];
        saa += sc * sc * u.wqq;
        sxa += sc * u.wxq;
    }
    if (!(saa > 0)) return false;
    const uint16_t hd = fp32_to_fp16_sat(static_cast<float>(sxa / saa));
    if (hd == b.hd) return false;
    const float d2 = fp16_to_fp32(hd);
    double e2 = 0;
    int8_t L2[kQK];
    float sub_err[16];
    for (int j = 0; j < 16; ++j) {
        sub_err[j] = fit_levels_rounded(x + 16 * j, w + 16 * j, 16, d2 * static_cast<float>(b.sc[j]), 0.0f, sp.lo,
                                        sp.hi, L2 + 16 * j);
        e2 += sub_err[j];
    }
    if (!(e2 < b.err)) return false;
    b.hd = hd;
    std::memcpy(b.L, L2, kQK);
    std::memcpy(b.sub_err, sub_err, sizeof sub_err);
    b.err = e2;
    return true;
}

void refine_sym(const float* x, const float* w, const SymSpec& sp, SymBlock& b, int from, int to) {
    for (int round = from; round < to; ++round) {
        if (round > 0 && !refit_sym_super(x, w, sp, b)) break;
        search_sym_scales(x, w, sp, b);
    }
}

void quantize_superblock_sym(const float* x, const float* imat, const SymSpec& sp, SymBlock& out) {
    float wf[kQK], wobj[kQK], scales[16], sw[16];
    float sumx2 = 0;
    for (int i = 0; i < kQK; ++i) sumx2 += x[i] * x[i];
    const float sigma2 = 2 * sumx2 / kQK;
    if (imat) std::memcpy(wobj, imat, sizeof wobj);
    else prior_weights(x, kQK, sumx2 / kQK, wobj);
    for (int i = 0; i < kQK; ++i)
        wf[i] = !imat ? x[i] * x[i] : sp.imat_sigma ? imat[i] * std::sqrt(sigma2 + x[i] * x[i]) : imat[i];
    out.err = std::numeric_limits<double>::infinity();
    // Candidates as in quantize_superblock_asym: reference, and objective-weighted with a search.
    for (const bool ref : {true, false}) {
        const float* fw = ref ? wf : wobj;
        float amax = 0, max_scale = 0;
        for (int j = 0; j < 16; ++j) {
            scales[j] = fit_scale_sym(x + 16 * j, fw + 16 * j, 16, -sp.lo, nullptr);
            sw[j] = 0;
            for (int l = 0; l < 16; ++l) sw[j] += fw[16 * j + l];
            if (std::fabs(scales[j]) > amax) {
                amax = std::fabs(scales[j]);
                max_scale = scales[j];
            }
        }
        SymBlock b;
        if (amax > 0) {
            if (ref) {  // plain rounding against the extreme scale mapped to -sn
                const float iscale = -static_cast<float>(sp.sn) / max_scale;
                for (int j = 0; j < 16; ++j) b.sc[j] = std::clamp(nearest_int(iscale * scales[j]), -sp.sn, sp.sn - 1);
                b.hd = fp32_to_fp16_sat(1.0f / iscale);
            } else {
                uint8_t Ls[16];
                b.hd = fp32_to_fp16_sat(fit_scale_sym(scales, sw, 16, sp.sn, Ls));
                for (int j = 0; j < 16; ++j) b.sc[j] = Ls[j] - sp.sn;
            }
        }
        refine_sym(x, wobj, sp, b, 0, kRounds);
        if (b.err < out.err) out = b;
    }
    refine_sym(x, wobj, sp, out, kRounds, kRoundsBest);
    const float d = fp16_to_fp32(out.hd);  // final levels chosen exactly, as in the asym case
    for (int j = 0; j < 16; ++j)
        fit_levels(x + 16 * j, wobj + 16 * j, 16, d * static_cast<float>(out.sc[j]), 0.0f, sp.lo, sp.hi,
                   out.L + 16 * j);
}

// Packs 2-bit fields of 256 levels v (0..3) as q2_K/q3_K do: element 128*h + 32*k + l goes to bits
// 2k..2k+1 of qs[32*h + l].
void pack_2bit(const uint8_t* v, uint8_t* qs) {
    for (int h = 0; h < 2; ++h)
        for (int l = 0; l < 32; ++l) {
            const uint8_t* p = v + 128 * h + l;
            qs[32 * h + l] = static_cast<uint8_t>((p[0] & 3) | ((p[32] & 3) << 2) | ((p[64] & 3) << 4) | ((p[96] & 3) << 6));
        }
}

// The 12-byte 6-bit scale/min packing of q4_K and q5_K.
void pack_scales_k4(const uint8_t* sc, const uint8_t* mn, uint8_t* s) {
    std::memset(s, 0, 12);
    for (int j = 0; j < 8; ++j) {
        if (j < 4) {
            s[j] = sc[j];
            s[j + 4] = mn[j];
        } else {
            s[j + 4] = static_cast<uint8_t>((sc[j] & 0xF) | ((mn[j] & 0xF) << 4));
            s[j - 4] |= static_cast<uint8_t>((sc[j] >> 4) << 6);
            s[j] |= static_cast<uint8_t>((mn[j] >> 4) << 6);
        }
    }
}

}  // namespace

void quantize_row_q2_K(const float* x, uint8_t* y, int64_t n, const float* imatrix) {
    AsymBlock b;
    uint8_t v[kQK];
    for (int64_t i = 0; i < n / kQK; ++i, x += kQK, y += 84) {
        quantize_superblock_asym(x, imatrix ? imatrix + i * kQK : nullptr, kQ2K, b);
        for (int j = 0; j < 16; ++j) y[j] = static_cast<uint8_t>(b.sc[j] | (b.mn[j] << 4));
        for (int e = 0; e < kQK; ++e) v[e] = static_cast<uint8_t>(b.L[e]);
        pack_2bit(v, y + 16);
        put_u16(y + 80, b.hd);
        put_u16(y + 82, b.hm);
    }
}

void quantize_row_q4_K(const float* x, uint8_t* y, int64_t n, const float* imatrix) {
    AsymBlock b;
    for (int64_t i = 0; i < n / kQK; ++i, x += kQK, y += 144) {
        quantize_superblock_asym(x, imatrix ? imatrix + i * kQK : nullptr, kQ4K, b);
        put_u16(y, b.hd);
        put_u16(y + 2, b.hm);
        pack_scales_k4(b.sc, b.mn, y + 4);
        for (int c = 0; c < 4; ++c)
            for (int l = 0; l < 32; ++l)
                y[16 + 32 * c + l] = static_cast<uint8_t>(b.L[64 * c + l] | (b.L[64 * c + 32 + l] << 4));
    }
}

void quantize_row_q5_K(const float* x, uint8_t* y, int64_t n, const float* imatrix) {
    AsymBlock b;
    for (int64_t i = 0; i < n / kQK; ++i, x += kQK, y += 176) {
        quantize_superblock_asym(x, imatrix ? imatrix + i * kQK : nullptr, kQ5K, b);
        put_u16(y, b.hd);
        put_u16(y + 2, b.hm);
        pack_scales_k4(b.sc, b.mn, y + 4);
        uint8_t* qh = y + 16;
        std::memset(qh, 0, 32);
        for (int e = 0; e < kQK; ++e) qh[e % 32] |= static_cast<uint8_t>(((b.L[e] >> 4) & 1) << (e / 32));
        for (int c = 0; c < 4; ++c)
            for (int l = 0; l < 32; ++l)
                y[48 + 32 * c + l] = static_cast<uint8_t>((b.L[64 * c + l] & 0xF) | ((b.L[64 * c + 32 + l] & 0xF) << 4));
    }
}

void quantize_row_q3_K(const float* x, uint8_t* y, int64_t n, const float* imatrix) {
    SymBlock b;
    uint8_t v[kQK];
    for (int64_t i = 0; i < n / kQK; ++i, x += kQK, y += 110) {
        quantize_superblock_sym(x, imatrix ? imatrix + i * kQK : nullptr, kQ3K, b);
        std::memset(y, 0, 32);  // hmask: bit e/32 of byte e%32 set when q >= 0
        for (int e = 0; e < kQK; ++e) {
            const int u = b.L[e] + 4;
            if (u > 3) y[e % 32] |= static_cast<uint8_t>(1u << (e / 32));
            v[e] = static_cast<uint8_t>(u & 3);
        }
        pack_2bit(v, y + 32);
        uint8_t* s = y + 96;
        std::memset(s, 0, 12);
        for (int j = 0; j < 16; ++j) {
            const int l = b.sc[j] + 32;
            if (j < 8) s[j] = static_cast<uint8_t>(l & 0xF);
            else s[j - 8] |= static_cast<uint8_t>((l & 0xF) << 4);
            s[8 + j % 4] |= static_cast<uint8_t>((l >> 4) << (2 * (j / 4)));
        }
        put_u16(y + 108, b.hd);
    }
}

void quantize_row_q6_K(const float* x, uint8_t* y, int64_t n, const float* imatrix) {
    SymBlock b;
    for (int64_t i = 0; i < n / kQK; ++i, x += kQK, y += 210) {
        quantize_superblock_sym(x, imatrix ? imatrix + i * kQK : nullptr, kQ6K, b);
        for (int h = 0; h < 2; ++h)
            for (int l = 0; l < 32; ++l) {
                uint8_t u[4];
                for (int k = 0; k < 4; ++k) u[k] = static_cast<uint8_t>(b.L[128 * h + 32 * k + l] + 32);
                y[64 * h + l] = static_cast<uint8_t>((u[0] & 0xF) | ((u[2] & 0xF) << 4));
                y[64 * h + 32 + l] = static_cast<uint8_t>((u[1] & 0xF) | ((u[3] & 0xF) << 4));
                y[128 + 32 * h + l] = static_cast<uint8_t>((u[0] >> 4) | ((u[1] >> 4) << 2) | ((u[2] >> 4) << 4) | ((u[3] >> 4) << 6));
            }
        for (int j = 0; j < 16; ++j) y[192 + j] = static_cast<uint8_t>(static_cast<int8_t>(b.sc[j]));
        put_u16(y + 208, b.hd);
    }
}

}  // namespace edgellm::quant
