// Scale searches for the k-quants; see kfit.h.
#include "quant/kfit.h"

#include <algorithm>
#include <cmath>

#include "quant/qsearch.h"

namespace edgellm::quant {

float fit_scale_min(const float* x, const float* wf, int n, int nmax, float rmin, float rdelta, int nstep,
                    bool use_mad, float& the_min) {
    float min = x[0], max = x[0];
    float sum_w = wf[0], sum_x = wf[0] * x[0];
    for (int i = 1; i < n; ++i) {
        min = std::min(min, x[i]);
        max = std::max(max, x[i]);
        sum_w += wf[i];
        sum_x += wf[i] * x[i];
    }
    if (min > 0) min = 0;
    if (max <= min) {
        the_min = -min;
        return 0.0f;
    }
    auto error_of = [&](float scale, float off, const uint8_t* L) {
        float e = 0;
        for (int i = 0; i < n; ++i) {
            const float diff = scale * L[i] + off - x[i];
            e += wf[i] * (use_mad ? std::fabs(diff) : diff * diff);
        }
        return e;
    };
    uint8_t L[32], Laux[32];
    float iscale = static_cast<float>(nmax) / (max - min);
    float scale = 1.0f / iscale;
    for (int i = 0; i < n; ++i) L[i] = static_cast<uint8_t>(std::clamp(nearest_int(iscale * (x[i] - min)), 0, nmax));
    float best = error_of(scale, min, L);
    for (int k = 0; k <= nstep; ++k) {
        iscale = (rmin + rdelta * k + static_cast<float>(nmax)) / (max - min);
        float sum_l = 0, sum_l2 = 0, sum_xl = 0;
        for (int i = 0; i < n; ++i) {
            const float v = iscale * (x[i] - min);
            const int l = v > 0 ? nearest_int(std::min(v, static_cast<float>(nmax))) : 0;
            Laux[i] = static_cast<uint8_t>(l);
            sum_l += wf[i] * l;
            sum_l2 += wf[i] * l * l;
            sum_xl += wf[i] * l * x[i];
        }
        const float D = sum_w * sum_l2 - sum_l * sum_l;
        if (!(D > 0)) continue;
        float this_scale = (sum_w * sum_xl - sum_x * sum_l) / D;
        float this_min = (sum_l2 * sum_x - sum_l * sum_xl) / D;
        if (this_min > 0) {
            this_min = 0;
            this_scale = sum_xl / sum_l2;
        }
        const float e = error_of(this_scale, this_min, Laux);
        if (e < best) {
            best = e;
            scale = this_scale;
            min = this_min;
            std::copy(Laux, Laux + n, L);
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
    auto sums = [&](float iscale, float& sumlx, float& suml2) {
        sumlx = suml2 = 0;
        for (int i = 0; i < n; ++i) {
            const int l = std::clamp(nearest_int(iscale * x[i]), -nmax, nmax - 1);
            const float w = wf ? wf[i] : x[i] * x[i];
            sumlx += w * x[i] * l;
            suml2 += w * l * l;
        }
    };
    float best_iscale = -nmax / max;
    float sumlx, suml2;
    sums(best_iscale, sumlx, suml2);
    float scale = suml2 > 0 ? sumlx / suml2 : 0.0f;
    float best = scale * sumlx;
    for (int k = -9; k <= 9; ++k) {
        if (k == 0) continue;
        const float iscale = -(nmax + 0.1f * k) / max;
        sums(iscale, sumlx, suml2);
        if (suml2 > 0 && sumlx * sumlx > best * suml2) {
            scale = sumlx / suml2;
            best = scale * sumlx;
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
