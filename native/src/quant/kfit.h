// Scale searches for the k-quants (256-element super-blocks of 16- or 32-element sub-blocks):
// the float fit of one sub-block, and the quantization of the sub-block scales themselves.
#pragma once

#include <cstdint>

namespace edgellm::quant {

// Fits x ~ scale*q - min with q in [0, nmax], min >= 0, over n elements weighted by wf: the grid
// is stretched by (nmax + rmin + rdelta*k)/(max - min) for k = 0..nstep and each grid's levels are
// refit by weighted least squares; the fit with the lowest weighted squared (or absolute, use_mad)
// error wins. Returns scale; min in the_min.
float fit_scale_min(const float* x, const float* wf, int n, int nmax, float rmin, float rdelta, int nstep,
                    bool use_mad, float& the_min);

// Fits x ~ scale*l with l in [-nmax, nmax-1] over n elements weighted by wf (null: x^2): the
// extreme element is mapped to -nmax +- 0.1*k, k = -9..9, and each grid refit by least squares.
// Stores l + nmax in L when L is not null.
float fit_scale_sym(const float* x, const float* wf, int n, int nmax, uint8_t* L);

// Quantizes n non-negative values v to v ~ d*L, L in [0, nmax], minimising sum w*(v - d*L)^2
// by a scale sweep and coordinate refinement. Returns d.
float fit_scale_pos(const float* v, int n, int nmax, const float* w, uint8_t* L);

}  // namespace edgellm::quant
