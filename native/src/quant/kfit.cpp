// Scale searches for the k-quants; see kfit.h.
#include "quant/kfit.h"

#include <algorithm>
#include <cmath>

#include "quant/qsearch.h"

namespace edgellm::quant {

namespace {

// sum_i w_i * |d*l_i + m - x_i| with l_i = clamp(round(iscale * (x_i + off)), 0, nmax), n = 16 or 32.
template <int N>
float mad_error_n(const float* __restrict x, const float* __restrict w, float iscale, float off, int nmax, float d,
                  float m) {
    const float hif = static_cast<float>(nmax);
    float e[N];
    for (int i = 0; i < N; ++i) {
        float t = iscale * (x[i] + off);
        t = 0.0f < t ? t : 0.0f;
        t = t < hif ? t : hif;
        const float l = (t + 12582912.0f) - 12582912.0f;
        e[i] = w[i] * std::fabs(d * l + m - x[i]);
    }
    float acc[kLanes];
    for (int l = 0; l < kLanes; ++l) acc[l] = e[l];
    for (int i = kLanes; i < N; i += kLanes)
        for (int l = 0; l < kLanes; ++l) acc[l] += e[i + l];
    return lane_sum(acc);
}

float mad_error(const float* x, const float* w, int n, float iscale, float off, int nmax, float d, float m) {
    return n == 16 ? mad_error_n<16>(x, w, iscale, off, nmax, d, m) : mad_error_n<32>(x, w, iscale, off, nmax, d, m);
}

}  // namespace

float fit_scale_min(const float* x, const float* wf, int n, int nmax, float rmin, float rdelta, int nstep,
                    bool use_mad, float& the_min) {
    float min = x[0], max = x[0];
    for (int i = 1; i < n; ++i) {
        min = std::min(min, x[i]);
        max = std::max(max, x[i]);
    }
    if (min > 0) min = 0;
    if (max <= min) {
        the_min = -min;
        return 0.0f;
    }
    float wx[kMaxFit], wxx[kMaxFit];
    for (int i = 0; i < n; ++i) {
        wx[i] = wf[i] * x[i];
        wxx[i] = wx[i] * x[i];
    }
    const float swf = lane_total(wf, n), sxf = lane_total(wx, n);
    const double sw = swf, sx = sxf, sxx = lane_total(wxx, n);
    // Error of x ~ d*l + m for the levels l of grid iscale anchored at min (m <= 0 is the offset).
    auto error_of = [&](float iscale, const RoundSums& r, float d, float m) {
        if (use_mad) return static_cast<double>(mad_error(x, wf, n, iscale, -min, nmax, d, m));
        // the quadratic sum_w (d*l + m - x)^2 expanded in the level sums
        return static_cast<double>(d) * d * r.sqq + 2.0 * d * m * r.sq + static_cast<double>(m) * m * sw -
               2.0 * d * r.sxq - 2.0 * m * sx + sxx;
    };
    float iscale = static_cast<float>(nmax) / (max - min);
    float scale = 1.0f / iscale;
    double best = error_of(iscale, round_sums(x, wf, n, iscale, -min, 0, nmax), scale, min);
    for (int k = 0; k <= nstep; ++k) {
        iscale = (rmin + rdelta * k + static_cast<float>(nmax)) / (max - min);
        const RoundSums r = round_sums(x, wf, n, iscale, -min, 0, nmax);
        const float D = swf * r.sqq - r.sq * r.sq;
        if (!(D > 0)) continue;
        const float inv_D = 1.0f / D;
        float this_scale = (swf * r.sxq - sxf * r.sq) * inv_D;
        float this_min = (r.sqq * sxf - r.sq * r.sxq) * inv_D;
        if (this_min > 0) {
            this_min = 0;
            this_scale = r.sxq / r.sqq;
        }
        const double e = error_of(iscale, r, this_scale, this_min);
        if (e < best) {
            best = e;
            scale = this_scale;
            min = this_min;  // later grids are anchored at the improved min
        }
    }
    the_min = -min;
    return scale;
}

float fit_scale_sym(const float* x, const float* wf, int n, int nmax, uint8_t* L) {
    float max = 0, amax = 0;
    for (int i = 0; i < n; ++i)
        if (std::fabs(x[i]) > amax) {
            amax = std::fabs(x[i]);
            max = x[i];
        }
    if (amax < 1e-15f) {
        if (L) std::fill(L, L + n, static_cast<uint8_t>(nmax));
        return 0.0f;
    }
    float wsq[kMaxFit];
    if (!wf) {
        for (int i = 0; i < n; ++i) wsq[i] = x[i] * x[i];
        wf = wsq;
    }
    float best_iscale = -nmax / max;
    RoundSums r = round_sums(x, wf, n, best_iscale, 0.0f, -nmax, nmax - 1);
    float scale = r.sqq > 0 ? r.sxq / r.sqq : 0.0f;
    float best = scale * r.sxq;
    for (int k = -9; k <= 9; ++k) {
        if (k == 0) continue;
        const float iscale = -(nmax + 0.1f * k) / max;
        r = round_sums(x, wf, n, iscale, 0.0f, -nmax, nmax - 1);
        if (r.sqq > 0 && r.sxq * r.sxq > best * r.sqq) {
            scale = r.sxq / r.sqq;
            best = scale * r.sxq;
            best_iscale = iscale;
        }
    }
    if (L)
        for (int i = 0; i < n; ++i)
            L[i] = static_cast<uint8_t>(std::clamp(nearest_int(best_iscale * x[i]), -nmax, nmax - 1) + nmax);
    return scale;
}

float fit_scale_pos(const float* v, int n, int nmax, const float* w, uint8_t* L) {
    float max = 0;
    for (int i = 0; i < n; ++i) max = std::max(max, v[i]);
    if (max < 1e-15f) {
        std::fill(L, L + n, uint8_t(0));
        return 0.0f;
    }
    auto mse_at = [&](float iscale) {
        const float scale = 1.0f / iscale;
        float mse = 0;
        for (int i = 0; i < n; ++i) {
            const int l = std::clamp(nearest_int(iscale * v[i]), 0, nmax);
            const float diff = v[i] - scale * l;
            mse += w[i] * diff * diff;
        }
        return mse;
    };
    float iscale = nmax / max;
    float best = mse_at(iscale);
    for (int k = -4; k <= 4; ++k) {
        if (k == 0) continue;
        const float is = (0.1f * k + nmax) / max;
        const float mse = mse_at(is);
        if (mse < best) {
            best = mse;
            iscale = is;
        }
    }
    float sumlx = 0, suml2 = 0;
    for (int i = 0; i < n; ++i) {
        const int l = std::clamp(nearest_int(iscale * v[i]), 0, nmax);
        L[i] = static_cast<uint8_t>(l);
        sumlx += w[i] * v[i] * l;
        suml2 += w[i] * l * l;
    }
    // coordinate refinement: move one level at a time while the optimal-scale error drops
    for (int iter = 0; iter < 5; ++iter) {
        int changed = 0;
        for (int i = 0; i < n; ++i) {
            float slx = sumlx - w[i] * v[i] * L[i];
            float sl2 = suml2 - w[i] * L[i] * L[i];
            if (!(slx > 0 && sl2 > 0)) continue;
            const int nl = std::clamp(nearest_int(v[i] * sl2 / slx), 0, nmax);
            if (nl == L[i]) continue;
            slx += w[i] * v[i] * nl;
            sl2 += w[i] * nl * nl;
            if (slx * slx * suml2 > sumlx * sumlx * sl2) {
                L[i] = static_cast<uint8_t>(nl);
                sumlx = slx;
                suml2 = sl2;
                ++changed;
            }
        }
        if (!changed) break;
    }
    return suml2 > 0 ? sumlx / suml2 : 0.0f;
}

}  // namespace edgellm::quant
