// Fused, in-place projections of per-unit slices for gluon-constraints.
//
// The typed boundary. Python (gluon_constraints/kernels/boundary.py) passes arrays of the
// structs below, declared there with ctypes under the same names and field names:
//
//   gc_unit_group   one weight's units and what to do to them. The weight is viewed as
//                   (groups, runs, units_per_group, run_length), run_length = size / (groups *
//                   runs * units_per_group); unit (g, u) is the slice [g, :, u, :], `runs` runs of
//                   run_length contiguous elements. Rows (a Dense weight, a convolution's filters)
//                   are (units, 1, 1); a transposed convolution's output channels (in, out,
//                   *kernel) are (1, in, out). `mode`: kModeNorm rescales a unit whose norm n
//                   (by `norm_order`: 1, 2, or 0 for the max norm) lies outside the band
//                   [lo * (1 - rtol), hi * (1 + rtol)] (n = 0 is never rescaled) by
//                   scale = rate * t / n + (1 - rate), t = hi above the band, lo below it; each
//                   entry is multiplied in double and rounded once to float (norms accumulate
//                   in double too), so every finite unit stays finite. MaxNorm(c) is lo=0, hi=c,
//                   rate=1; UnitNorm is lo=hi=1; MinMaxNorm is itself. kModeNonNeg maps w to
//                   w * (w >= 0) elementwise, kModeClip to min(max(w, lo), hi), kModeNone leaves
//                   the weight alone.
//   gc_update_rule  the optimizer update fused in front of the projection: `rule` (kRule*),
//                   rescale_grad, clip_gradient (< 0: none) and the rule's hyperparameters
//                   h1, h2, h3 (sgd_mom, nag_mom: momentum; adam: beta1, beta2, epsilon;
//                   rmsprop: gamma1, epsilon, clip_weights (< 0: none); unused ones 0).
//                   `background` 1 queues the call on MXNet's prioritized CPU workers (those
//                   its kvstore reduces gradients on) at the lowest priority instead of the
//                   context's own worker, so that it runs beside the operators queued after it
//                   that only read its inputs: a weight average's step (nothing waits for it
//                   until the next update of its weights) beside the next forward pass.
//   gc_rates        one weight's learning rate and weight decay for this step.
//
// Three calls, queued on MXNet's engine (gc_project, gc_update and gc_touched below) rather than
// registered as MXNet operators: MXNet gives every library operator a temporary-space and a random-number
// resource, shared by all CPU operators, so each call would wait for the backward pass still
// queued (and the engine would order all calls one after another), which costs a multi-context
// step its overlap of updates with the backward pass. A queued call waits only for its arrays.
//
// gc_project: weights w_1..w_k (one gc_unit_group each), projected in place. Per unit, one pass
//   while the unit is in cache: the sum of squares (in double), then the rescale; units already
//   inside the band are not written at all.
// gc_update: the projection fused into one of MXNet's updates. Per weight (w_i, grad_i,
//   state_i...), updated in place; the states are
//   sgd: none; sgd_mom: (mom); nag_mom: (mom); adam: (mean, var); rmsprop: (n). Elementwise, with
//     g = rescale_grad * grad (+ wd * w for adam and rmsprop), clipped to +-clip_gradient if
//         clip_gradient >= 0 (for sgd_mom and nag_mom before the wd term is added)
//   sgd (sgd_update):           w = (1 - lr * wd) * w - (lr * rescale_grad) * grad, or with clipping
//                               w = (1 - lr * wd) * w - lr * g   (a weight average is this rule with
//                               grad = the weight, rescale_grad = -1, wd = 1, lr = its rate)
//   sgd_mom (sgd_mom_update):   mom = momentum * mom - lr * wd * w - lr * g;   w = w + mom
//   nag_mom (nag_mom_update):   m = momentum * mom;  w' = w - m + (momentum + 1) * (m - lr * (g + wd * w));
//                               mom = m - lr * (g + wd * w')   (MXNet's in-place order: w' is new)
//   adam (adam_update):         mean = beta1 * mean + (1 - beta1) * g;
//                               var = beta2 * var + (1 - beta2) * g * g;
//                               w = w - lr * mean / (sqrt(var) + epsilon)
//   rmsprop (rmsprop_update):   n = (1 - gamma1) * g * g + gamma1 * n;
//                               w = w - lr * g / sqrt(n + epsilon), clipped to +-clip_weights if >= 0
//   each in MXNet's own float32 operation order (built with -ffp-contract=off), accumulating the
//   new unit's sum of squares, then the projection while the unit is in cache.
//
// Weights under 65536 elements run one per thread (several at once from 2^20 elements in all);
// larger ones spread their units over the threads. With stats, each weight has one more array,
// after all the others: a float32 array of 3 receiving (fraction of units the projection
// changed, largest and mean unit norm after it). The norm is the band's (by norm_order) in
// kModeNorm, L2 in the elementwise modes.
// gc_touched: one weight's rows that a row-sparse array has (listed first by gc_row_indices, a
//   library operator, at the end of this file), updated by one of MXNet's lazy rules (SGD, SGD
//   with momentum, Adam, AdaGrad, on the gradient's rows) or not, then projected, while in cache.
// A malformed call (an unknown mode or rule, a layout that does not divide its weight's size,
// the wrong number of arrays) fails when it is queued, and queues nothing; an array that cannot
// be read in place when the call runs (MKL-DNN's blocked layout) fails the call there, and MXNet
// raises the failure at the next wait on its arrays.
// Build (gluon_constraints/kernels/library.py does it): g++ -shared -fPIC -std=c++17 -O3
//   -march=native -ffp-contract=off -fno-math-errno -fopenmp -Wl,-Bsymbolic
//   -Wl,--version-script=exports.map project_rows.cc <mxnet>/src/lib_api.cc -I <mxnet>/include
//   -o libgc_project_rows.so

#include <algorithm>
#include <cmath>
#include <cstdio>
#include <cstdlib>
#include <memory>
#include <mutex>
#include <sstream>
#include <stdexcept>
#include <cstddef>
#include <cstring>
#include <string>
#include <vector>

#include "dlpack/dlpack.h"
#include "mxnet/lib_api.h"

// -- the typed boundary (the same names in kernels/boundary.py) ------------------------------------
extern "C" {

enum { kModeNorm = 0, kModeNonNeg = 1, kModeClip = 2, kModeNone = 3 };
// The dense rules (gc_update), then the lazy row updates of a row-sparse gradient and no update
// (gc_touched_rows).
enum {
  kRuleSGDMom = 0, kRuleNAGMom = 1, kRuleAdam = 2, kRuleRMSProp = 3,
  kRuleSGDLazy = 4, kRuleSGDMomLazy = 5, kRuleAdamLazy = 6, kRuleAdaGradLazy = 7, kRuleNone = 8,
  kRuleSGD = 9  // dense, without momentum (numbered after the others, which files and tests name)
};

struct gc_unit_group {
  int64_t groups, runs, units_per_group;
  int32_t mode, norm_order;
  double lo, hi, rate, rtol;
};

struct gc_update_rule {
  int32_t rule, background;
  double rescale_grad, clip_gradient, h1, h2, h3;
};

struct gc_rates {
  double lr, wd;
};

}  // extern "C"

namespace {

// A call that cannot run: its message names what is wrong.
struct Failure : std::runtime_error {
  using std::runtime_error::runtime_error;
};

double sum_of_squares(const float* row, int64_t length) {
  double sum = 0.0;
#pragma omp simd reduction(+ : sum)
  for (int64_t j = 0; j < length; ++j) sum += static_cast<double>(row[j]) * row[j];
  return sum;
}

// Where one weight's units lie (a gc_unit_group with its run length): unit (g, u) is the `runs`
// runs of `run_length` contiguous elements at ((g * runs + a) * units_per_group + u) * run_length,
// a = 0..runs-1. Rows are (units, 1, 1, n).
struct Layout {
  int64_t groups, runs, units_per_group, run_length;

  int64_t units() const { return groups * units_per_group; }
  int64_t offset(int64_t unit, int64_t a) const {
    return ((unit / units_per_group * runs + a) * units_per_group + unit % units_per_group) * run_length;
  }
};

// Weights from this size up run their units on several threads; smaller ones take one thread
// each, several weights at once when together they have kSpreadSize elements (below that,
// waking the threads costs more than it saves: 50 weights of 64x64 run faster on one).
constexpr int64_t kParallelSize = 65536;
constexpr int64_t kSpreadSize = 1 << 20;

// The larger of a and b, NaN if either is (std::fmax drops a NaN): a unit holding NaN has a NaN
// max norm, and is left as it is, as by MXNet's operators.
inline double max_keeping_nan(double a, double b) { return (a > b || a != a) ? a : b; }

// What to do with the units of one weight: its gc_unit_group's mode and band.
struct UnitProjection {
  const gc_unit_group& g;

  // The run's contribution to its unit's norm (by norm_order), given its sum of squares for 2.
  double measure(const float* run, int64_t length, double squares) const {
    if (g.norm_order == 2) return squares;
    double n = 0.0;
    if (g.norm_order == 1) {
#pragma omp simd reduction(+ : n)
      for (int64_t j = 0; j < length; ++j) n += std::fabs(static_cast<double>(run[j]));
    } else {
      for (int64_t j = 0; j < length; ++j) n = max_keeping_nan(n, std::fabs(static_cast<double>(run[j])));
    }
    return n;
  }

  double scale(double n) const {
    if (n > g.hi * (1.0 + g.rtol)) return g.rate * (g.hi / n) + (1.0 - g.rate);
    if (n > 0.0 && n < g.lo * (1.0 - g.rtol)) return g.rate * (g.lo / n) + (1.0 - g.rate);
    return 1.0;
  }

  // The elementwise modes on one run.
  void apply(float* run, int64_t length) const {
    if (g.mode == kModeNonNeg) {
      for (int64_t j = 0; j < length; ++j) run[j] *= static_cast<float>(run[j] >= 0.0f);
    } else if (g.mode == kModeClip) {
      const float a = static_cast<float>(g.lo), b = static_cast<float>(g.hi);
      for (int64_t j = 0; j < length; ++j) run[j] = run[j] < a ? a : (run[j] > b ? b : run[j]);
    }
  }
};

// run[j] * factor in double, rounded once to float. The factor of a finite unit is finite in
// double (a norm of 1e-45 and a bound of 3e38 give 3e83) but not always in float, and the
// product is at most the bound in magnitude: finite input, finite output.
void rescale(float* run, int64_t length, double factor) {
#pragma omp simd
  for (int64_t j = 0; j < length; ++j) run[j] = static_cast<float>(static_cast<double>(run[j]) * factor);
}

// Statistics of a weight's projection: units moved, sum and largest of the norms after it.
struct Totals {
  double moved = 0.0, total = 0.0, largest = 0.0;

  void add(bool unit_moved, double norm) {
    moved += unit_moved;
    total += norm;
    largest = std::fmax(largest, norm);
  }
};

// Units are projected in blocks of up to kBlock consecutive units of one group, each block's
// runs visited in memory order: a block's a-th runs lie side by side, so short runs (a
// transposed convolution's) are still read as contiguous stretches.
constexpr int64_t kBlock = 64;

int64_t block_count(const Layout& l) {
  if (l.units_per_group == 1) return (l.units() + kBlock - 1) / kBlock;
  return l.groups * ((l.units_per_group + kBlock - 1) / kBlock);
}

// The first unit and the number of units of block b.
void block_units(const Layout& l, int64_t b, int64_t* first, int64_t* count) {
  if (l.units_per_group == 1) {
    *first = b * kBlock;
    *count = std::min(kBlock, l.units() - *first);
    return;
  }
  const int64_t per_group = (l.units_per_group + kBlock - 1) / kBlock;
  const int64_t u = b % per_group * kBlock;
  *first = b / per_group * l.units_per_group + u;
  *count = std::min(kBlock, l.units_per_group - u);
}

// The first pass over block b's units, for their norms (by ord) in `measured` and their sums of
// squares in `squares` (where the mode or the statistics need them). With kUpdate,
// `update(offset, length)` first updates that many elements in place and returns their sum of
// squares.
template <bool kUpdate, typename UpdateRun>
void measure_block(const UnitProjection& p, float* w, const Layout& l, int64_t first, int64_t count,
                   const UpdateRun& update, double* measured, double* squares) {
  const bool norm = p.g.mode == kModeNorm;
  if (l.units_per_group == 1) {  // rows: each unit is one run
    for (int64_t k = 0; k < count; ++k) {
      float* run = w + l.offset(first + k, 0);
      squares[k] = kUpdate ? update(run - w, l.run_length) : sum_of_squares(run, l.run_length);
      if (norm) measured[k] = p.measure(run, l.run_length, squares[k]);
    }
    return;
  }
  // Strided units: the block's a-th runs lie side by side, count * length elements from the
  // first unit's; accumulate per element over a (whole stretches, vectorised), then per unit.
  const int64_t stretch = count * l.run_length;
  std::vector<double> acc(stretch, 0.0);
  const int ord = norm ? p.g.norm_order : 2;
  for (int64_t a = 0; a < l.runs; ++a) {
    const int64_t at = l.offset(first, a);
    if (kUpdate) update(at, stretch);
    const float* x = w + at;
    if (ord == 2) {
#pragma omp simd
      for (int64_t j = 0; j < stretch; ++j) acc[j] += static_cast<double>(x[j]) * x[j];
    } else if (ord == 1) {
#pragma omp simd
      for (int64_t j = 0; j < stretch; ++j) acc[j] += std::fabs(static_cast<double>(x[j]));
    } else {
      for (int64_t j = 0; j < stretch; ++j) acc[j] = max_keeping_nan(acc[j], std::fabs(static_cast<double>(x[j])));
    }
  }
  for (int64_t k = 0; k < count; ++k) {
    double r = 0.0;
    for (int64_t j = k * l.run_length; j < (k + 1) * l.run_length; ++j)
      r = ord == 0 ? max_keeping_nan(r, acc[j]) : r + acc[j];
    (norm ? measured : squares)[k] = r;
    if (norm && ord == 2) squares[k] = r;
  }
}

// Projects block b of weight w in place and adds to `totals` (with `stats`); `read` says whether
// the first pass (measure_block) is needed at all: a norm, statistics or an update.
template <bool kUpdate, typename UpdateRun>
void project_block(const UnitProjection& p, float* w, const Layout& l, int64_t b, bool stats,
                   bool read, const UpdateRun& update, Totals* totals) {
  int64_t first, count;
  block_units(l, b, &first, &count);
  double measured[kBlock], squares[kBlock];  // written for the block's units by measure_block
  if (read) measure_block<kUpdate>(p, w, l, first, count, update, measured, squares);
  if (p.g.mode == kModeNorm) {
    double factors[kBlock];
    bool any = false;
    for (int64_t k = 0; k < count; ++k) {
      const double n = p.g.norm_order == 2 ? std::sqrt(measured[k]) : measured[k];
      const double s = p.scale(n);
      factors[k] = s;
      any = any || s != 1.0;
      if (stats) totals->add(s != 1.0, n * s);
    }
    if (!any) return;
    for (int64_t a = 0; a < l.runs; ++a) {
      for (int64_t k = 0; k < count; ++k) {
        if (factors[k] == 1.0) continue;
        rescale(w + l.offset(first + k, a), l.run_length, factors[k]);
      }
    }
    return;
  }
  double after[kBlock];
  std::fill(after, after + count, 0.0);
  for (int64_t a = 0; a < l.runs; ++a) {
    for (int64_t k = 0; k < count; ++k) {
      float* run = w + l.offset(first + k, a);
      p.apply(run, l.run_length);
      if (stats) after[k] += sum_of_squares(run, l.run_length);
    }
  }
  if (stats)
    for (int64_t k = 0; k < count; ++k) totals->add(after[k] != squares[k], std::sqrt(after[k]));
}

// Projects every block of a weight of `size` elements (on several threads from kParallelSize).
template <bool kUpdate, typename UpdateRun>
Totals project_weight(const UnitProjection& p, float* w, const Layout& l, int64_t size, bool stats,
                      bool read, const UpdateRun& update) {
  const int64_t blocks = block_count(l);
  double moved = 0.0, total = 0.0, largest = 0.0;
#pragma omp parallel for schedule(static) if (size >= kParallelSize) \
    reduction(+ : moved, total) reduction(max : largest)
  for (int64_t b = 0; b < blocks; ++b) {
    Totals t;
    project_block<kUpdate>(p, w, l, b, stats, read, update, &t);
    moved += t.moved;
    total += t.total;
    largest = std::fmax(largest, t.largest);
  }
  return Totals{moved, total, largest};
}

// Calls `project(i)` for every weight i: the small ones spread over threads, the large ones after.
template <typename Project>
void for_each_weight(const std::vector<int64_t>& sizes, const Project& project) {
  const int64_t count = static_cast<int64_t>(sizes.size());
  int64_t small = 0;
  for (const int64_t size : sizes) small += size < kParallelSize ? size : 0;
#pragma omp parallel for schedule(dynamic, 1) if (small >= kSpreadSize)
  for (int64_t i = 0; i < count; ++i)
    if (sizes[i] < kParallelSize) project(i);
  for (int64_t i = 0; i < count; ++i)
    if (sizes[i] >= kParallelSize) project(i);
}

float clipped(float x, float bound) { return x > bound ? bound : (x < -bound ? -bound : x); }

// One optimizer update of a row in place (MXNet's kernels, term for term), returning the new
// row's sum of squares.
struct Update {
  int rule;  // kRule*
  float lr, wd, rescale, clip, h1, h2, h3;

  static int state_count(int rule) {
    if (rule == kRuleAdam || rule == kRuleAdamLazy) return 2;
    return rule == kRuleSGD || rule == kRuleSGDLazy || rule == kRuleNone ? 0 : 1;
  }

  double row(float* w, const float* grad, float* s1, float* s2, int64_t length) const {
    double sum = 0.0;
    switch (rule) {
      case kRuleSGD: {  // SGDKernel
        const float keep = 1.f - lr * wd, step = lr * rescale;
        if (clip >= 0.0f) {
#pragma omp simd reduction(+ : sum)
          for (int64_t j = 0; j < length; ++j) {
            const float updated = keep * w[j] - lr * clipped(rescale * grad[j], clip);
            w[j] = updated;
            sum += static_cast<double>(updated) * updated;
          }
        } else {
#pragma omp simd reduction(+ : sum)
          for (int64_t j = 0; j < length; ++j) {
            const float updated = keep * w[j] - step * grad[j];
            w[j] = updated;
            sum += static_cast<double>(updated) * updated;
          }
        }
        break;
      }
      case kRuleSGDMom:
#pragma omp simd reduction(+ : sum)
        for (int64_t j = 0; j < length; ++j) {
          float g = rescale * grad[j];
          if (clip >= 0.0f) g = clipped(g, clip);
          const float m = h1 * s1[j] - lr * wd * w[j] - lr * g;
          s1[j] = m;
          const float updated = w[j] + m;
          w[j] = updated;
          sum += static_cast<double>(updated) * updated;
        }
        break;
      case kRuleNAGMom:
#pragma omp simd reduction(+ : sum)
        for (int64_t j = 0; j < length; ++j) {
          float g = rescale * grad[j];
          if (clip >= 0.0f) g = clipped(g, clip);
          const float m = h1 * s1[j];
          const float updated = w[j] - m + (h1 + 1) * (m - lr * (g + wd * w[j]));
          w[j] = updated;
          s1[j] = m - lr * (g + wd * updated);
          sum += static_cast<double>(updated) * updated;
        }
        break;
      case kRuleAdam:
#pragma omp simd reduction(+ : sum)
        for (int64_t j = 0; j < length; ++j) {
          float g = grad[j] * rescale + w[j] * wd;
          if (clip >= 0.0f) g = clipped(g, clip);
          const float mean = h1 * s1[j] + (1.0f - h1) * g;
          const float var = h2 * s2[j] + (1.0f - h2) * g * g;
          s1[j] = mean;
          s2[j] = var;
          const float updated = w[j] - lr * mean / (std::sqrt(var) + h3);
          w[j] = updated;
          sum += static_cast<double>(updated) * updated;
        }
        break;
      case kRuleRMSProp:
#pragma omp simd reduction(+ : sum)
        for (int64_t j = 0; j < length; ++j) {
          float g = rescale * grad[j] + wd * w[j];
          if (clip >= 0.0f) g = clipped(g, clip);
          const float n = (1.0f - h1) * (g * g) + h1 * s1[j];
          s1[j] = n;
          float updated = w[j] - lr * (g / std::sqrt(n + h2));
          if (h3 >= 0.0f) updated = clipped(updated, h3);
          w[j] = updated;
          sum += static_cast<double>(updated) * updated;
        }
        break;
      default:
        sum = lazy_row(w, grad, s1, s2, length);
    }
    return sum;
  }

  // The lazy updates of the rows a row-sparse gradient has (MXNet's CPU kernels for a dense
  // weight and a row-sparse gradient, term for term; `grad` is the gradient's row), or none.
  // Clipping is decided once per row, so that each loop vectorises.
  double lazy_row(float* w, const float* grad, float* s1, float* s2, int64_t length) const {
    double sum = 0.0;
    const bool clipping = clip >= 0.0f;
    switch (rule) {
      case kRuleSGDLazy: {  // SGDDnsRspKernel
        const float keep = 1.f - lr * wd, step = lr * rescale;
        if (clipping) {
#pragma omp simd reduction(+ : sum)
          for (int64_t j = 0; j < length; ++j) {
            w[j] = keep * w[j] - lr * clipped(rescale * grad[j], clip);
            sum += static_cast<double>(w[j]) * w[j];
          }
        } else {
#pragma omp simd reduction(+ : sum)
          for (int64_t j = 0; j < length; ++j) {
            w[j] = keep * w[j] - step * grad[j];
            sum += static_cast<double>(w[j]) * w[j];
          }
        }
        break;
      }
      case kRuleSGDMomLazy: {  // SGDMomDnsRspDnsKernel
        const float rate = lr * wd, step = lr * rescale;
        if (clipping) {
#pragma omp simd reduction(+ : sum)
          for (int64_t j = 0; j < length; ++j) {
            s1[j] = h1 * s1[j] - rate * w[j] - lr * clipped(rescale * grad[j], clip);
            w[j] = w[j] + s1[j];
            sum += static_cast<double>(w[j]) * w[j];
          }
        } else {
#pragma omp simd reduction(+ : sum)
          for (int64_t j = 0; j < length; ++j) {
            s1[j] = h1 * s1[j] - rate * w[j] - step * grad[j];
            w[j] = w[j] + s1[j];
            sum += static_cast<double>(w[j]) * w[j];
          }
        }
        break;
      }
      case kRuleAdamLazy:  // AdamDnsRspDnsKernel
        if (clipping) {
#pragma omp simd reduction(+ : sum)
          for (int64_t j = 0; j < length; ++j) {
            const float g = clipped(grad[j] * rescale + w[j] * wd, clip);
            s1[j] = h1 * s1[j] + (1.f - h1) * g;
            s2[j] = h2 * s2[j] + (1.f - h2) * (g * g);
            w[j] = w[j] - lr * s1[j] / (std::sqrt(s2[j]) + h3);
            sum += static_cast<double>(w[j]) * w[j];
          }
        } else {
#pragma omp simd reduction(+ : sum)
          for (int64_t j = 0; j < length; ++j) {
            const float g = grad[j] * rescale + w[j] * wd;
            s1[j] = h1 * s1[j] + (1.f - h1) * g;
            s2[j] = h2 * s2[j] + (1.f - h2) * g * g;
            w[j] = w[j] - lr * s1[j] / (std::sqrt(s2[j]) + h3);
            sum += static_cast<double>(w[j]) * w[j];
          }
        }
        break;
      case kRuleAdaGradLazy:  // AdagradDnsRspDnsKernel: s1 = history; h1 = epsilon
#pragma omp simd reduction(+ : sum)
        for (int64_t j = 0; j < length; ++j) {
          const float g = clipping ? clipped(grad[j] * rescale, clip) : grad[j] * rescale;
          s1[j] = s1[j] + g * g;
          w[j] = w[j] - g / std::sqrt(s1[j] + h1) * lr;
          sum += static_cast<double>(w[j]) * w[j];
        }
        break;
      default:  // kRuleNone
        sum = sum_of_squares(w, length);
    }
    return sum;
  }
};


// -- checking (when a call is queued: a malformed call fails at once and queues nothing) -------

void check_group(const gc_unit_group& g, size_t i) {
  const std::string which = "gc_unit_group " + std::to_string(i) + ": ";
  if (g.mode < kModeNorm || g.mode > kModeNone) throw Failure(which + "unknown mode " + std::to_string(g.mode));
  if (g.norm_order != 0 && g.norm_order != 1 && g.norm_order != 2)
    throw Failure(which + "norm_order must be 1, 2 or 0 (max): got " + std::to_string(g.norm_order));
  if (g.groups < 1 || g.runs < 1 || g.units_per_group < 1)
    throw Failure(which + "groups, runs and units_per_group must be >= 1");
}

// gc_update takes the dense rules, gc_touched_rows the lazy ones and kRuleNone.
void check_rule(const gc_update_rule& r, bool lazy = false) {
  const int first = lazy ? kRuleSGDLazy : kRuleSGDMom, last = lazy ? kRuleNone : kRuleRMSProp;
  if ((r.rule < first || r.rule > last) && (lazy || r.rule != kRuleSGD))
    throw Failure("unknown " + std::string(lazy ? "lazy " : "") + "rule " + std::to_string(r.rule));
  if (r.background != 0 && r.background != 1)
    throw Failure("background must be 0 or 1, not " + std::to_string(r.background));
}

// -- MXNet's C API, as handed over by gc_bind ------------------------------------------------

struct Context {  // mxnet::Context
  int32_t dev_type, dev_id;
};
using SyncFunction = void (*)(void*, void*);
using Deleter = void (*)(void*);
struct MXNet {
  int (*push_sync)(SyncFunction, void*, Deleter, const Context*, void**, int, void**, int,
                   const void*, int, const char*);  // MXEnginePushSyncND
  int (*to_dlpack)(void*, DLManagedTensor**);          // MXNDArrayToDLPack
  int (*detach)(void*, void**);                        // MXNDArrayDetach
  int (*free)(void*);                                  // MXNDArrayFree
  int (*context)(void*, int*, int*);                   // MXNDArrayGetContext
  const char* (*last_error)();                         // MXGetLastError
} mxnet_api;

// A background call's engine property, MXNet's FnProperty::kCPUPrioritized (an enum class of int:
// kNormal, kCopyFromGPU, kCopyToGPU, kCPUPrioritized, ...), and its priority, below the kvstore's
// reductions (0 down to minus the number of parameters), which its workers run first.
constexpr int kPrioritized = 3;
constexpr int kLowestPriority = -(1 << 30);

// Device types of MXNet's CPU contexts: cpu, cpu_pinned, cpu_shared.
bool on_cpu(int dev_type) { return dev_type == 1 || dev_type == 3 || dev_type == 5; }

// One array's memory while a queued call runs. MXNet hands it over only in the plain layout:
// an array MKL-DNN holds in its blocked layout fails (it is never read as if it were plain).
class Memory {
 public:
  // `code` and `bits`: the element type it must have (float32 unless said). A row-sparse array's
  // memory is the rows it stores.
  explicit Memory(void* handle, uint8_t code = kDLFloat, uint8_t bits = 32) {
    if (mxnet_api.to_dlpack(handle, &tensor_) != 0)
      throw Failure(std::string("cannot read an array in place (MKL-DNN may hold it in its blocked "
                                "layout): ") + mxnet_api.last_error());
    const DLTensor& t = tensor_->dl_tensor;
    if (t.dtype.code != code || t.dtype.bits != bits || t.dtype.lanes != 1 || t.strides != nullptr) {
      tensor_->deleter(tensor_);
      throw Failure(code == kDLFloat ? "its arrays must be compact float32" : "its index array must be compact int64");
    }
    size_ = 1;
    for (int d = 0; d < t.ndim; ++d) size_ *= t.shape[d];
    rows_ = t.ndim > 0 ? t.shape[0] : 1;
  }
  ~Memory() { tensor_->deleter(tensor_); }
  Memory(const Memory&) = delete;
  Memory& operator=(const Memory&) = delete;

  float* data() const {
    return reinterpret_cast<float*>(static_cast<char*>(tensor_->dl_tensor.data) +
                                    tensor_->dl_tensor.byte_offset);
  }
  int64_t size() const { return size_; }
  int64_t rows_of() const { return rows_; }

 private:
  DLManagedTensor* tensor_ = nullptr;
  int64_t size_ = 0, rows_ = 0;
};

// A queued call: copies of its groups, rule and rates, and its own references to the arrays (so
// they outlive the caller's), released when MXNet drops the call.
struct Call {
  Call(const char* name, bool update, bool stats) : name(name), update(update), stats(stats) {}

  const char* name;
  bool update, stats;
  gc_update_rule rule{};
  std::vector<gc_unit_group> groups;
  std::vector<gc_rates> rates;  // per weight, for an update
  int per_weight = 1;           // arrays per weight: 1, or (w, grad, states...)
  std::vector<void*> arrays;    // per weight its arrays, then one stats array per weight

  ~Call() {
    for (void* a : arrays) mxnet_api.free(a);
  }

  size_t count() const { return groups.size(); }
  void* stats_array(size_t i) const { return arrays[per_weight * count() + i]; }
};

// One weight's stats output: (moved units / units, largest norm, total norm / units).
void write_stats(void* handle, double moved, double total, double largest, int64_t units) {
  Memory out(handle);
  if (out.size() != 3) throw Failure("a stats array must have 3 elements");
  float* o = out.data();
  o[0] = static_cast<float>(moved / units);
  o[1] = static_cast<float>(largest);
  o[2] = static_cast<float>(total / units);
}

Layout layout_of(const gc_unit_group& g, int64_t size) {
  const int64_t cells = g.groups * g.runs * g.units_per_group;
  if (size % cells != 0)
    throw Failure(std::to_string(size) + " elements do not split into " + std::to_string(g.groups) +
                  " x " + std::to_string(g.runs) + " x " + std::to_string(g.units_per_group) + " runs");
  return {g.groups, g.runs, g.units_per_group, size / cells};
}

// Runs a queued call: per weight its arrays (the weight alone, or with its gradient and states
// for an update), then its statistics.
void run_call(const Call& call) {
  const size_t count = call.count(), per = call.per_weight;
  std::vector<std::unique_ptr<Memory>> arrays;
  std::vector<Layout> layouts;
  std::vector<int64_t> sizes;
  for (size_t i = 0; i < count; ++i) {
    for (size_t k = 0; k < per; ++k) {
      arrays.emplace_back(new Memory(call.arrays[per * i + k]));
      if (arrays.back()->size() != arrays[per * i]->size())
        throw Failure("a weight's gradient and states must have its size");
    }
    sizes.push_back(arrays[per * i]->size());
    layouts.push_back(layout_of(call.groups[i], sizes.back()));
  }
  const gc_update_rule& r = call.rule;
  std::vector<Totals> totals(count);
  for_each_weight(sizes, [&](int64_t i) {
    const UnitProjection p{call.groups[i]};
    float* w = arrays[per * i]->data();
    if (!call.update) {
      if (p.g.mode == kModeNone && !call.stats) return;
      const bool read = p.g.mode == kModeNorm || call.stats;
      totals[i] = project_weight<false>(p, w, layouts[i], sizes[i], call.stats, read,
                                        [](int64_t, int64_t) { return 0.0; });
      return;
    }
    const float* grad = arrays[per * i + 1]->data();
    float* s1 = per > 2 ? arrays[per * i + 2]->data() : nullptr;
    float* s2 = per > 3 ? arrays[per * i + 3]->data() : nullptr;
    const Update step{r.rule, static_cast<float>(call.rates[i].lr), static_cast<float>(call.rates[i].wd),
                      static_cast<float>(r.rescale_grad), static_cast<float>(r.clip_gradient),
                      static_cast<float>(r.h1), static_cast<float>(r.h2), static_cast<float>(r.h3)};
    totals[i] = project_weight<true>(p, w, layouts[i], sizes[i], call.stats, true,
                                     [&](int64_t at, int64_t length) {
      return step.row(w + at, grad + at, s1 + at, s2 == nullptr ? nullptr : s2 + at, length);
    });
  });
  if (call.stats)
    for (size_t i = 0; i < count; ++i)
      write_stats(call.stats_array(i), totals[i].moved, totals[i].total, totals[i].largest, layouts[i].units());
}

// What MXNet's engine runs. A failure is thrown to the engine, which keeps it with the call's
// written arrays and raises it (an MXNetError) at the next wait on them, as for its own operators.
void run_touched(const Call& call);

void run(void* /* run_context */, void* queued) {
  const Call& call = *static_cast<Call*>(queued);
  try {
    if (std::strcmp(call.name, "gc_touched_rows") == 0)
      run_touched(call);
    else
      run_call(call);
  } catch (const Failure& failure) {
    throw Failure(std::string(call.name) + ": " + failure.what());
  }
}

void release(void* queued) { delete static_cast<Call*>(queued); }

// Takes the call's own references to `handles` and queues it on the first array's context; the
// arrays at the `read_only` positions are read, all others written.
void queue(std::unique_ptr<Call> call, void** handles, int count, const std::vector<bool>& read_only) {
  int dev_type = 0, dev_id = 0;
  if (count == 0) return;
  if (mxnet_api.context(handles[0], &dev_type, &dev_id) != 0) throw Failure(mxnet_api.last_error());
  if (!on_cpu(dev_type)) throw Failure("the fused kernels run on CPU contexts only");
  for (int i = 0; i < count; ++i) {
    void* own = nullptr;
    if (mxnet_api.detach(handles[i], &own) != 0) throw Failure(mxnet_api.last_error());
    call->arrays.push_back(own);
  }
  std::vector<void*> read, written;
  for (int i = 0; i < count; ++i) (read_only[i] ? read : written).push_back(call->arrays[i]);
  const Context context{dev_type, dev_id};
  const char* name = call->name;
  const bool background = call->rule.background != 0;
  Call* queued = call.release();  // MXNet owns it from here: `release` deletes it, even on failure
  if (mxnet_api.push_sync(run, queued, release, &context, read.data(), static_cast<int>(read.size()),
                          written.data(), static_cast<int>(written.size()), background ? &kPrioritized : nullptr,
                          background ? kLowestPriority : 0, name) != 0)
    throw Failure(mxnet_api.last_error());
}

// Writes the reason a call was refused, named after the kernel (a call that ran at once, as on
// MXNet's NaiveEngine, has named it already).
int failed(const std::exception& error, const char* name, char* message, int size) {
  const std::string what = error.what(), prefix = std::string(name) + ": ";
  std::snprintf(message, static_cast<size_t>(size), "%s%s", what.rfind(prefix, 0) == 0 ? "" : prefix.c_str(),
                what.c_str());
  return -1;
}

}  // namespace

extern "C" {

// Hands over MXNet's C API functions (the library does not link against libmxnet).
void gc_bind(void* push_sync, void* to_dlpack, void* detach, void* free, void* context, void* last_error) {
  mxnet_api.push_sync = reinterpret_cast<decltype(mxnet_api.push_sync)>(push_sync);
  mxnet_api.to_dlpack = reinterpret_cast<decltype(mxnet_api.to_dlpack)>(to_dlpack);
  mxnet_api.detach = reinterpret_cast<decltype(mxnet_api.detach)>(detach);
  mxnet_api.free = reinterpret_cast<decltype(mxnet_api.free)>(free);
  mxnet_api.context = reinterpret_cast<decltype(mxnet_api.context)>(context);
  mxnet_api.last_error = reinterpret_cast<decltype(mxnet_api.last_error)>(last_error);
}

// Queues gc_project_rows: `count` groups, one per weight in `arrays` (then one stats array per
// weight if `stats`). Returns 0, or -1 with the reason in `message` (nothing queued).
int gc_project(const gc_unit_group* groups, int count, int stats, void** arrays, int array_count,
               char* message, int size) {
  try {
    std::unique_ptr<Call> call(new Call("gc_project_rows", false, stats != 0));
    call->groups.assign(groups, groups + count);
    for (size_t i = 0; i < call->count(); ++i) check_group(call->groups[i], i);
    const int expected = count * (stats ? 2 : 1);
    if (array_count != expected)
      throw Failure(std::to_string(array_count) + " arrays for " + std::to_string(count) + " unit groups");
    queue(std::move(call), arrays, array_count, std::vector<bool>(array_count, false));
    return 0;
  } catch (const std::exception& error) {
    return failed(error, "gc_project_rows", message, size);
  }
}

// Queues gc_update_project_rows: `count` weights, each with its group and rates, per weight
// (w, grad, states...) in `arrays`, then one stats array per weight if `stats`. Returns 0, or
// -1 with the reason in `message` (nothing queued).
int gc_update(const gc_update_rule* rule, const gc_unit_group* groups, const gc_rates* rates, int count,
              int stats, void** arrays, int array_count, char* message, int size) {
  try {
    std::unique_ptr<Call> call(new Call("gc_update_project_rows", true, stats != 0));
    check_rule(*rule);
    call->rule = *rule;
    call->groups.assign(groups, groups + count);
    call->rates.assign(rates, rates + count);
    for (size_t i = 0; i < call->count(); ++i) check_group(call->groups[i], i);
    call->per_weight = 2 + Update::state_count(rule->rule);
    const int expected = count * (call->per_weight + (stats ? 1 : 0));
    if (array_count != expected)
      throw Failure(std::to_string(array_count) + " arrays for " + std::to_string(count) + " weights");
    std::vector<bool> read_only(array_count, false);
    for (int i = 0; i < count; ++i) read_only[call->per_weight * i + 1] = true;  // the gradients
    queue(std::move(call), arrays, array_count, read_only);
    return 0;
  } catch (const std::exception& error) {
    return failed(error, "gc_update_project_rows", message, size);
  }
}

// The boundary's layout, for the test that checks Python's ctypes declarations against it: the
// size of `structure`, or with `field` the field's offset; -1 for a name it does not know.
int64_t gc_layout(const char* structure, const char* field) {
#define GC_FIELD(S, F) if (std::strcmp(field, #F) == 0) return static_cast<int64_t>(offsetof(S, F));
  const bool whole = field == nullptr;
  if (std::strcmp(structure, "gc_unit_group") == 0) {
    if (whole) return sizeof(gc_unit_group);
    GC_FIELD(gc_unit_group, groups) GC_FIELD(gc_unit_group, runs) GC_FIELD(gc_unit_group, units_per_group)
    GC_FIELD(gc_unit_group, mode) GC_FIELD(gc_unit_group, norm_order) GC_FIELD(gc_unit_group, lo)
    GC_FIELD(gc_unit_group, hi) GC_FIELD(gc_unit_group, rate) GC_FIELD(gc_unit_group, rtol)
  } else if (std::strcmp(structure, "gc_update_rule") == 0) {
    if (whole) return sizeof(gc_update_rule);
    GC_FIELD(gc_update_rule, rule) GC_FIELD(gc_update_rule, background) GC_FIELD(gc_update_rule, rescale_grad)
    GC_FIELD(gc_update_rule, clip_gradient) GC_FIELD(gc_update_rule, h1) GC_FIELD(gc_update_rule, h2)
    GC_FIELD(gc_update_rule, h3)
  } else if (std::strcmp(structure, "gc_rates") == 0) {
    if (whole) return sizeof(gc_rates);
    GC_FIELD(gc_rates, lr) GC_FIELD(gc_rates, wd)
  }
#undef GC_FIELD
  return -1;
}

}  // extern "C"

// -- the rows a row-sparse array has ------------------------------------------------------------
//
// MXNet's C API hands a row-sparse array's row indices over only by waiting for the array; an
// operator is handed them. So a small library operator, gc_row_indices, copies them into a dense
// int64 array (its first entry the count), and gc_touched, a queued call like the others (it
// holds no shared resource, so the calls of several contexts run at once), updates and projects
// those rows. Library operators each hold a temporary-space and a random-number resource that
// every CPU operator shares; gc_row_indices holds them for a copy of the indices only.

namespace {

using Attributes = std::unordered_map<std::string, std::string>;

// lib_api keeps every error message a library ever gave in one list, which MXNet quotes whole
// with each new failure; a failure here replaces the list (its one member) with its own message.
static_assert(sizeof(mxnet::ext::MXerrorMsgs) == sizeof(std::vector<std::stringstream*>),
              "lib_api's MXerrorMsgs is expected to hold its message list alone");
std::mutex reported_lock;

// Runs `body`, turning a failure into MXNet's error message for the library operator.
template <typename Body>
mxnet::ext::MXReturnValue reported(const Body& body) {
  try {
    body();
    return mxnet::ext::MX_SUCCESS;
  } catch (const std::exception& error) {
    std::lock_guard<std::mutex> hold(reported_lock);
    auto* messages = reinterpret_cast<std::vector<std::stringstream*>*>(mxnet::ext::MXerrorMsgs::get());
    for (std::stringstream* message : *messages) delete message;
    messages->clear();
    MX_ERROR_MSG << "gc_row_indices: " << error.what();
    return mxnet::ext::MX_FAIL;
  }
}

// The output's length: the attribute "capacity", an integer >= 1.
unsigned int capacity_of(const Attributes& attrs) {
  const auto found = attrs.find("capacity");
  if (found == attrs.end()) throw Failure("attribute \"capacity\" is missing");
  char* end = nullptr;
  const long long value = std::strtoll(found->second.c_str(), &end, 10);
  if (end == found->second.c_str() || *end != '\0' || value < 1 || value > 0xFFFFFFFFLL)
    throw Failure("attribute \"capacity\" must be an integer >= 1: got \"" + found->second + "\"");
  return static_cast<unsigned int>(value);
}

// gc_row_indices: input a row-sparse array (any type); output a dense int64 array of
// "capacity" entries: the number of rows the input stores, then their indices (the rest is
// left as it was).
mxnet::ext::MXReturnValue indices_parse(const Attributes& attrs, int* inputs, int* outputs) {
  return reported([&] {
    capacity_of(attrs);
    *inputs = *outputs = 1;
  });
}

mxnet::ext::MXReturnValue indices_type(const Attributes&, std::vector<int>*, std::vector<int>* out) {
  (*out)[0] = mxnet::ext::kInt64;
  return mxnet::ext::MX_SUCCESS;
}

mxnet::ext::MXReturnValue indices_storage(const Attributes&, std::vector<int>* in, std::vector<int>* out) {
  return reported([&] {
    if ((*in)[0] != mxnet::ext::kRowSparseStorage) throw Failure("its input must be row-sparse");
    (*out)[0] = mxnet::ext::kDefaultStorage;
  });
}

mxnet::ext::MXReturnValue indices_shape(const Attributes& attrs, std::vector<std::vector<unsigned int>>*,
                                        std::vector<std::vector<unsigned int>>* out) {
  return reported([&] { (*out)[0] = {capacity_of(attrs)}; });
}

mxnet::ext::MXReturnValue indices_forward(const Attributes&, std::vector<mxnet::ext::MXTensor>* inputs,
                                          std::vector<mxnet::ext::MXTensor>* outputs, const mxnet::ext::OpResource&) {
  return reported([&] {
    const auto* rows = reinterpret_cast<const mxnet::ext::MXSparse*>((*inputs)[0].data_ptr);
    mxnet::ext::MXTensor& out = (*outputs)[0];
    if (rows->indices_len + 1 > out.size())
      throw Failure(std::to_string(rows->indices_len) + " rows do not fit an output of " + std::to_string(out.size()));
    int64_t* written = out.data<int64_t>();
    written[0] = rows->indices_len;
    std::copy(rows->indices, rows->indices + rows->indices_len, written + 1);
  });
}

// One array's memory as a typed pointer while a queued call runs (float32 or int64).
template <typename T>
T* typed(const Memory& memory) { return reinterpret_cast<T*>(memory.data()); }

// gc_touched's arrays: the weight, the row indices (gc_row_indices' output), the gradient if
// there is an update (its values: the rows it stores, in the indices' order), the states, and
// the statistics. A weight that stores every row (dense, or row-sparse with all rows) has row r
// at r * length; one that stores fewer (a row-sparse weight projected on its own rows, with no
// update) has its k-th stored row at k * length.
void run_touched(const Call& call) {
  const gc_unit_group& g = call.groups[0];
  const gc_update_rule& r = call.rule;
  const int states = Update::state_count(r.rule);
  const bool update = r.rule != kRuleNone;
  const size_t at_states = update ? 3 : 2;
  Memory weight(call.arrays[0]), indices(call.arrays[1], kDLInt, 64);
  const int64_t rows = g.groups, length = weight.rows_of() > 0 ? weight.size() / weight.rows_of() : 0;
  const int64_t stored = weight.rows_of();
  const int64_t* listed = typed<int64_t>(indices);
  const int64_t count = listed[0];
  if (count < 0 || count + 1 > indices.size()) throw Failure("the row indices are malformed");
  const int64_t* index = listed + 1;
  const bool own = stored != rows;
  if (own && (update || count != stored))
    throw Failure("a weight that stores " + std::to_string(stored) + " of its " + std::to_string(rows) +
                  " rows takes no update, and only its own rows");
  std::unique_ptr<Memory> gradient(update ? new Memory(call.arrays[2]) : nullptr);
  if (gradient && gradient->size() != count * length) throw Failure("the gradient does not hold the indexed rows");
  std::vector<std::unique_ptr<Memory>> state(states);
  for (int k = 0; k < states; ++k) {
    state[k].reset(new Memory(call.arrays[at_states + k]));
    if (state[k]->size() != rows * length) throw Failure("an optimizer state must store every row of the weight");
  }
  for (int64_t k = 0; k < count; ++k)
    if (index[k] < 0 || index[k] >= rows) throw Failure("row index " + std::to_string(index[k]) + " is out of range");
  float* w = weight.data();
  const float* grad = gradient ? gradient->data() : nullptr;
  float* s1 = states > 0 ? state[0]->data() : nullptr;
  float* s2 = states > 1 ? state[1]->data() : nullptr;
  const UnitProjection p{g};
  const Update step{r.rule, static_cast<float>(call.rates[0].lr), static_cast<float>(call.rates[0].wd),
                    static_cast<float>(r.rescale_grad), static_cast<float>(r.clip_gradient),
                    static_cast<float>(r.h1), static_cast<float>(r.h2), static_cast<float>(r.h3)};
  const Layout row{1, 1, 1, length};
  const bool read = g.mode == kModeNorm || call.stats || update;
  double moved = 0.0, total = 0.0, largest = 0.0;
#pragma omp parallel for schedule(static) if (count * length >= kParallelSize) \
    reduction(+ : moved, total) reduction(max : largest)
  for (int64_t k = 0; k < count; ++k) {
    const int64_t at = index[k] * length;
    float* unit = w + (own ? k * length : at);
    Totals t;
    project_block<true>(p, unit, row, 0, call.stats, read, [&](int64_t, int64_t) {
      return step.lazy_row(unit, grad == nullptr ? nullptr : grad + k * length, s1 == nullptr ? nullptr : s1 + at,
                           s2 == nullptr ? nullptr : s2 + at, length);
    }, &t);
    moved += t.moved;
    total += t.total;
    largest = std::fmax(largest, t.largest);
  }
  if (call.stats) write_stats(call.arrays.back(), moved, total, largest, std::max<int64_t>(count, 1));
}

}  // namespace

REGISTER_OP(gc_row_indices)
    .setParseAttrs(indices_parse)
    .setInferType(indices_type)
    .setInferSType(indices_storage)
    .setInferShape(indices_shape)
    .setForward(indices_forward, "cpu");

extern "C" {

mxnet::ext::MXReturnValue initialize(int /* version */) { return mxnet::ext::MX_SUCCESS; }

// Queues gc_touched: one weight's rows listed in `arrays`' second array (gc_row_indices'
// output) updated by `rule` (a lazy rule, or kRuleNone) and projected as `group` (rows: its
// `groups` is the weight's row count) says; arrays (weight, indices, gradient if an update,
// states..., then a stats array if `stats`). Returns 0, or -1 with the reason in `message`
// (nothing queued).
int gc_touched(const gc_update_rule* rule, const gc_unit_group* group, const gc_rates* rates, int stats,
               void** arrays, int array_count, char* message, int size) {
  try {
    std::unique_ptr<Call> call(new Call("gc_touched_rows", true, stats != 0));
    check_rule(*rule, true);
    check_group(*group, 0);
    if (group->runs != 1 || group->units_per_group != 1) throw Failure("the group must be rows: (rows, 1, 1)");
    call->rule = *rule;
    call->groups.assign(group, group + 1);
    call->rates.assign(rates, rates + 1);
    const bool update = rule->rule != kRuleNone;
    const int expected = 2 + (update ? 1 : 0) + Update::state_count(rule->rule) + (stats ? 1 : 0);
    if (array_count != expected)
      throw Failure(std::to_string(array_count) + " arrays where the rule takes " + std::to_string(expected));
    std::vector<bool> read_only(array_count, false);
    read_only[1] = true;  // the indices
    if (update) read_only[2] = true;  // the gradient
    queue(std::move(call), arrays, array_count, read_only);
    return 0;
  } catch (const std::exception& error) {
    return failed(error, "gc_touched_rows", message, size);
  }
}

}  // extern "C"
