// Fused, in-place projections of per-unit slices for gluon-constraints.
//
// Each weight's units are described by a layout (G, A, U): the weight viewed as
// (G, A, U, size / (G * A * U)), unit (g, u) is the slice [g, :, u, :], A runs of contiguous
// elements. Rows (a Dense weight, a convolution's filters) are (units, 1, 1); a transposed
// convolution's output channels (in, out, *kernel) are (1, in, out). A unit is rescaled only if
// its norm n (L1, L2 or max, by "ord") lies outside the band
//   [lo * (1 - rtol), hi * (1 + rtol)]      (n = 0 is never rescaled)
// by  scale = rate * t / n + (1 - rate),  t = hi above the band, lo below it.
// MaxNorm(c) is lo=0, hi=c, rate=1; UnitNorm is lo=hi=1; MinMaxNorm is itself. Mode "nonneg"
// maps w to w * (w >= 0) elementwise, mode "clip" to min(max(w, lo), hi); mode "none" leaves
// the weight alone.
//
// gc_project_rows: inputs w_1..w_k, outputs o_1..o_k of the same shapes. Per unit, one pass
//   while the unit is in cache: the sum of squares (in double), then the rescale. Called in place
//   (out= the inputs), units already inside the band are not written at all.
// gc_update_project_rows: the projection fused into one of MXNet's updates ("rule"). Inputs
//   (w_i, grad_i, state_i...), outputs (w_i, state_i...), in place only; the states are
//   sgd_mom: (mom); nag_mom: (mom); adam: (mean, var); rmsprop: (n). Elementwise, with
//     g = rescale_grad * grad (+ wd * w for adam and rmsprop), clipped to +-clip_gradient if
//         clip_gradient >= 0 (for sgd_mom and nag_mom before the wd term is added)
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
// Attributes (few: MXNet marshals every attribute on every call): "rows" holds one
// "G/A/U,mode,lo,hi,rate,rtol,ord" entry per weight (ord 1, 2, or 0 for the max norm),
// separated by ";". Weights under 65536 elements run one per thread (several at once from 2^20
// elements in all); larger ones spread their units over the threads. The update operator adds "rule" and
// "update" = "rescale_grad,clip_gradient,h1,h2,h3,lr_1,wd_1,lr_2,wd_2,..." with the rule's
// hyperparameters h (sgd_mom, nag_mom: momentum; adam: beta1, beta2, epsilon; rmsprop: gamma1,
// epsilon, clip_weights; unused ones 0).
// With "stats" = "1" both operators have one more output per weight, after the others: a
// float32 array of 3, (fraction of units the projection changed, largest and mean unit norm
// after it). The norm is the band's (by "ord") in mode "norm", L2 in the elementwise modes.
// Build (gluon_constraints/kernels/library.py does it): g++ -shared -fPIC -std=c++17 -O3
//   -march=native -ffp-contract=off -fno-math-errno -fopenmp -Wl,-Bsymbolic
//   -Wl,--version-script=exports.map project_rows.cc <mxnet>/src/lib_api.cc
//   -I <mxnet>/include -o libgc_project_rows.so

#include <algorithm>
#include <cmath>
#include <cstdlib>
#include <string>
#include <string_view>
#include <vector>

#include "mxnet/lib_api.h"

using namespace mxnet::ext;

namespace {

using Attributes = std::unordered_map<std::string, std::string>;

// `text` cut at every `separator`, as views into it (no copies: attributes are parsed at every
// call). A trailing separator ends the last part; an empty text has no parts.
std::vector<std::string_view> split(std::string_view text, char separator) {
  std::vector<std::string_view> parts;
  size_t start = 0;
  while (start < text.size()) {
    const size_t end = std::min(text.find(separator, start), text.size());
    parts.push_back(text.substr(start, end - start));
    start = end + 1;
  }
  return parts;
}

// The number a field starts with (fields are views into a NUL-terminated attribute string, so
// strtod stops at the separator after them).
double number(std::string_view field) { return std::strtod(field.data(), nullptr); }

int weight_count(const Attributes& attrs) { return static_cast<int>(split(attrs.at("rows"), ';').size()); }

double sum_of_squares(const float* row, int64_t length) {
  double sum = 0.0;
#pragma omp simd reduction(+ : sum)
  for (int64_t j = 0; j < length; ++j) sum += static_cast<double>(row[j]) * row[j];
  return sum;
}

// Where one weight's units lie: the weight viewed as (groups, segments, interleave, length),
// unit (g, u) is the `segments` runs of `length` contiguous elements at
// ((g * segments + a) * interleave + u) * length, a = 0..segments-1. Rows are (units, 1, 1, n).
struct Layout {
  int64_t groups, segments, interleave, length;

  int64_t units() const { return groups * interleave; }
  int64_t offset(int64_t unit, int64_t a) const {
    return ((unit / interleave * segments + a) * interleave + unit % interleave) * length;
  }
};

// Weights from this size up run their units on several threads; smaller ones take one thread
// each, several weights at once when together they have kSpreadSize elements (below that,
// waking the threads costs more than it saves: 50 weights of 64x64 run faster on one).
constexpr int64_t kParallelSize = 65536;
constexpr int64_t kSpreadSize = 1 << 20;

// What to do with the units of one weight.
struct UnitProjection {
  enum Mode { kNorm, kNonNeg, kClip, kNone };
  int64_t groups, segments, interleave;  // the Layout, less its length (the weight's size says)
  Mode mode;
  double lo, hi, rate, rtol;
  int ord;  // 1, 2, or 0 for the max norm

  // The layout on a weight of `size` elements, or false (with an error message) if it does not split.
  bool layout(const char* op, int64_t size, Layout* l) const {
    const int64_t cells = groups * segments * interleave;
    if (cells <= 0 || size % cells != 0) {
      MX_ERROR_MSG << op << ": " << size << " elements do not split into " << groups << " x "
                   << segments << " x " << interleave << " runs";
      return false;
    }
    *l = {groups, segments, interleave, size / cells};
    return true;
  }

  // The run's contribution to its unit's norm (by ord), given its sum of squares for ord 2.
  double measure(const float* run, int64_t length, double squares) const {
    if (ord == 2) return squares;
    double n = 0.0;
    if (ord == 1) {
#pragma omp simd reduction(+ : n)
      for (int64_t j = 0; j < length; ++j) n += std::fabs(static_cast<double>(run[j]));
    } else {
      for (int64_t j = 0; j < length; ++j) n = std::fmax(n, std::fabs(static_cast<double>(run[j])));
    }
    return n;
  }

  double scale(double n) const {
    if (n > hi * (1.0 + rtol)) return rate * (hi / n) + (1.0 - rate);
    if (n > 0.0 && n < lo * (1.0 - rtol)) return rate * (lo / n) + (1.0 - rate);
    return 1.0;
  }

  // The elementwise modes on one run.
  void apply(float* run, int64_t length) const {
    if (mode == kNonNeg) {
      for (int64_t j = 0; j < length; ++j) run[j] *= static_cast<float>(run[j] >= 0.0f);
    } else if (mode == kClip) {
      const float a = static_cast<float>(lo), b = static_cast<float>(hi);
      for (int64_t j = 0; j < length; ++j) run[j] = run[j] < a ? a : (run[j] > b ? b : run[j]);
    }
  }
};

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
  if (l.interleave == 1) return (l.units() + kBlock - 1) / kBlock;
  return l.groups * ((l.interleave + kBlock - 1) / kBlock);
}

// The first unit and the number of units of block b.
void block_units(const Layout& l, int64_t b, int64_t* first, int64_t* count) {
  if (l.interleave == 1) {
    *first = b * kBlock;
    *count = std::min(kBlock, l.units() - *first);
    return;
  }
  const int64_t per_group = (l.interleave + kBlock - 1) / kBlock;
  const int64_t u = b % per_group * kBlock;
  *first = b / per_group * l.interleave + u;
  *count = std::min(kBlock, l.interleave - u);
}

// The first pass over block b's units, for their norms (by ord) in `measured` and their sums of
// squares in `squares` (where the mode or the statistics need them). With kUpdate,
// `update(offset, length)` first updates that many elements in place and returns their sum of
// squares.
template <bool kUpdate, typename UpdateRun>
void measure_block(const UnitProjection& p, float* w, const Layout& l, int64_t first, int64_t count,
                   const UpdateRun& update, double* measured, double* squares) {
  const bool norm = p.mode == UnitProjection::kNorm;
  if (l.interleave == 1) {  // rows: each unit is one run
    for (int64_t k = 0; k < count; ++k) {
      float* run = w + l.offset(first + k, 0);
      squares[k] = kUpdate ? update(run - w, l.length) : sum_of_squares(run, l.length);
      if (norm) measured[k] = p.measure(run, l.length, squares[k]);
    }
    return;
  }
  // Strided units: the block's a-th runs lie side by side, count * length elements from the
  // first unit's; accumulate per element over a (whole stretches, vectorised), then per unit.
  const int64_t stretch = count * l.length;
  std::vector<double> acc(stretch, 0.0);
  const int ord = norm ? p.ord : 2;
  for (int64_t a = 0; a < l.segments; ++a) {
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
      for (int64_t j = 0; j < stretch; ++j) acc[j] = std::fmax(acc[j], std::fabs(static_cast<double>(x[j])));
    }
  }
  for (int64_t k = 0; k < count; ++k) {
    double r = 0.0;
    for (int64_t j = k * l.length; j < (k + 1) * l.length; ++j) r = ord == 0 ? std::fmax(r, acc[j]) : r + acc[j];
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
  double measured[kBlock] = {0.0}, squares[kBlock] = {0.0};
  if (read) measure_block<kUpdate>(p, w, l, first, count, update, measured, squares);
  if (p.mode == UnitProjection::kNorm) {
    float factors[kBlock];
    bool any = false;
    for (int64_t k = 0; k < count; ++k) {
      const double n = p.ord == 2 ? std::sqrt(measured[k]) : measured[k];
      const double s = p.scale(n);
      factors[k] = static_cast<float>(s);
      any = any || s != 1.0;
      if (stats) totals->add(s != 1.0, n * s);
    }
    if (!any) return;
    for (int64_t a = 0; a < l.segments; ++a) {
      for (int64_t k = 0; k < count; ++k) {
        if (factors[k] == 1.0f) continue;
        float* run = w + l.offset(first + k, a);
        for (int64_t j = 0; j < l.length; ++j) run[j] *= factors[k];
      }
    }
    return;
  }
  double after[kBlock] = {0.0};
  for (int64_t a = 0; a < l.segments; ++a) {
    for (int64_t k = 0; k < count; ++k) {
      float* run = w + l.offset(first + k, a);
      p.apply(run, l.length);
      if (stats) after[k] += sum_of_squares(run, l.length);
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

bool with_stats(const Attributes& attrs) {
  const auto found = attrs.find("stats");
  return found != attrs.end() && found->second == "1";
}

// One weight's stats output: (moved units / units, largest norm, total norm / units).
void write_stats(MXTensor* out, double moved, double total, double largest, int64_t units) {
  float* o = out->data<float>();
  o[0] = static_cast<float>(moved / units);
  o[1] = static_cast<float>(largest);
  o[2] = static_cast<float>(total / units);
}

bool parse_projections(const char* op, const Attributes& attrs, std::vector<UnitProjection>* out) {
  for (const auto& entry : split(attrs.at("rows"), ';')) {
    const auto f = split(entry, ',');
    const auto shape = split(f.empty() ? entry : f[0], '/');
    UnitProjection::Mode mode;
    if (f.size() != 7 || shape.size() != 3) {
      MX_ERROR_MSG << op << ": malformed rows entry '" << entry << "'";
      return false;
    }
    if (f[1] == "norm") mode = UnitProjection::kNorm;
    else if (f[1] == "nonneg") mode = UnitProjection::kNonNeg;
    else if (f[1] == "clip") mode = UnitProjection::kClip;
    else if (f[1] == "none") mode = UnitProjection::kNone;
    else {
      MX_ERROR_MSG << op << ": unknown mode '" << f[1] << "'";
      return false;
    }
    out->push_back({static_cast<int64_t>(number(shape[0])), static_cast<int64_t>(number(shape[1])),
                    static_cast<int64_t>(number(shape[2])), mode, number(f[2]), number(f[3]),
                    number(f[4]), number(f[5]), static_cast<int>(number(f[6]))});
  }
  return true;
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
  enum Rule { kSGDMom, kNAGMom, kAdam, kRMSProp } rule;
  float lr, wd, rescale, clip, h1, h2, h3;

  static int state_count(Rule rule) { return rule == kAdam ? 2 : 1; }

  double row(float* w, const float* grad, float* s1, float* s2, int64_t length) const {
    double sum = 0.0;
    switch (rule) {
      case kSGDMom:
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
      case kNAGMom:
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
      case kAdam:
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
      case kRMSProp:
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
    }
    return sum;
  }
};

bool parse_rule(const Attributes& attrs, Update::Rule* rule) {
  const auto found = attrs.find("rule");
  const std::string name = found == attrs.end() ? "" : found->second;
  if (name == "sgd_mom") *rule = Update::kSGDMom;
  else if (name == "nag_mom") *rule = Update::kNAGMom;
  else if (name == "adam") *rule = Update::kAdam;
  else if (name == "rmsprop") *rule = Update::kRMSProp;
  else {
    MX_ERROR_MSG << "gc_update_project_rows: unknown rule '" << name << "'";
    return false;
  }
  return true;
}

MXReturnValue all_float32(const char* op, const std::vector<int>& types) {
  for (size_t i = 0; i < types.size(); ++i) {
    if (types[i] != kFloat32) {
      MX_ERROR_MSG << op << ": input " << i << " must be float32";
      return MX_FAIL;
    }
  }
  return MX_SUCCESS;
}

// -- gc_project_rows -------------------------------------------------------------------------

MXReturnValue project_parse(const Attributes& attrs, int* num_in, int* num_out) {
  *num_in = *num_out = weight_count(attrs);
  if (with_stats(attrs)) *num_out += *num_in;
  return MX_SUCCESS;
}

MXReturnValue project_type(const Attributes& attrs, std::vector<int>* in_types,
                           std::vector<int>* out_types) {
  for (auto& t : *out_types) t = kFloat32;
  return all_float32("gc_project_rows", *in_types);
}

MXReturnValue project_shape(const Attributes& attrs,
                            std::vector<std::vector<unsigned int>>* in_shapes,
                            std::vector<std::vector<unsigned int>>* out_shapes) {
  for (size_t i = 0; i < out_shapes->size(); ++i)
    (*out_shapes)[i] = i < in_shapes->size() ? (*in_shapes)[i] : std::vector<unsigned int>{3};
  return MX_SUCCESS;
}

MXReturnValue project_forward(const Attributes& attrs, std::vector<MXTensor>* inputs,
                              std::vector<MXTensor>* outputs, const OpResource& res) {
  const char* op = "gc_project_rows";
  std::vector<UnitProjection> projections;
  if (!parse_projections(op, attrs, &projections)) return MX_FAIL;
  const bool stats = with_stats(attrs);
  const size_t count = projections.size();
  std::vector<Layout> layouts(count);
  std::vector<int64_t> sizes(count);
  for (size_t i = 0; i < count; ++i) {
    sizes[i] = (*inputs)[i].size();
    if (!projections[i].layout(op, sizes[i], &layouts[i])) return MX_FAIL;
  }
  for_each_weight(sizes, [&](int64_t i) {
    const UnitProjection& p = projections[i];
    const Layout& l = layouts[i];
    const float* in = (*inputs)[i].data<float>();
    float* out = (*outputs)[i].data<float>();
    if (in != out)
      for (int64_t j = 0; j < sizes[i]; ++j) out[j] = in[j];
    if (p.mode == UnitProjection::kNone && !stats) return;
    const bool read = p.mode == UnitProjection::kNorm || stats;
    const Totals t = project_weight<false>(p, out, l, sizes[i], stats, read,
                                           [](int64_t, int64_t) { return 0.0; });
    if (stats) write_stats(&(*outputs)[count + i], t.moved, t.total, t.largest, l.units());
  });
  return MX_SUCCESS;
}

// -- gc_update_project_rows ------------------------------------------------------------------

// Arrays per weight: inputs (w, grad, states...), outputs (w, states...).
int inputs_per_weight(Update::Rule rule) { return 2 + Update::state_count(rule); }

MXReturnValue update_parse(const Attributes& attrs, int* num_in, int* num_out) {
  Update::Rule rule;
  if (!parse_rule(attrs, &rule)) return MX_FAIL;
  const auto count = weight_count(attrs);
  *num_in = inputs_per_weight(rule) * count;
  *num_out = (inputs_per_weight(rule) - 1 + (with_stats(attrs) ? 1 : 0)) * count;
  return MX_SUCCESS;
}

MXReturnValue update_type(const Attributes& attrs, std::vector<int>* in_types,
                          std::vector<int>* out_types) {
  for (auto& t : *out_types) t = kFloat32;
  return all_float32("gc_update_project_rows", *in_types);
}

MXReturnValue update_shape(const Attributes& attrs,
                           std::vector<std::vector<unsigned int>>* in_shapes,
                           std::vector<std::vector<unsigned int>>* out_shapes) {
  Update::Rule rule;
  if (!parse_rule(attrs, &rule)) return MX_FAIL;
  const size_t per_in = inputs_per_weight(rule), per_out = per_in - 1;
  const size_t count = in_shapes->size() / per_in;
  for (size_t i = 0; i < count; ++i) {
    (*out_shapes)[per_out * i] = (*in_shapes)[per_in * i];
    for (size_t k = 1; k < per_out; ++k) (*out_shapes)[per_out * i + k] = (*in_shapes)[per_in * i + 1 + k];
  }
  for (size_t i = per_out * count; i < out_shapes->size(); ++i) (*out_shapes)[i] = {3};
  return MX_SUCCESS;
}

MXReturnValue update_forward(const Attributes& attrs, std::vector<MXTensor>* inputs,
                             std::vector<MXTensor>* outputs, const OpResource& res) {
  const char* op = "gc_update_project_rows";
  Update::Rule rule;
  if (!parse_rule(attrs, &rule)) return MX_FAIL;
  std::vector<UnitProjection> projections;
  if (!parse_projections(op, attrs, &projections)) return MX_FAIL;
  const auto update = split(attrs.at("update"), ',');
  const size_t per_in = inputs_per_weight(rule), per_out = per_in - 1;
  const bool stats = with_stats(attrs);
  const size_t count = projections.size();
  if (update.size() != 5 + 2 * count) {
    MX_ERROR_MSG << op << ": \"update\" has " << update.size() << " numbers, not " << 5 + 2 * count;
    return MX_FAIL;
  }
  std::vector<Layout> layouts(count);
  std::vector<int64_t> sizes(count);
  for (size_t i = 0; i < count; ++i) {
    bool in_place = (*outputs)[per_out * i].data<float>() == (*inputs)[per_in * i].data<float>();
    for (size_t k = 1; k < per_out; ++k)
      in_place = in_place && (*outputs)[per_out * i + k].data<float>() == (*inputs)[per_in * i + 1 + k].data<float>();
    if (!in_place) {
      MX_ERROR_MSG << op << " runs in place only (out= its weights and states)";
      return MX_FAIL;
    }
    sizes[i] = (*inputs)[per_in * i].size();
    if (!projections[i].layout(op, sizes[i], &layouts[i])) return MX_FAIL;
  }
  for_each_weight(sizes, [&](int64_t i) {
    const UnitProjection& p = projections[i];
    const Layout& l = layouts[i];
    float* w = (*outputs)[per_out * i].data<float>();
    const float* grad = (*inputs)[per_in * i + 1].data<float>();
    float* s1 = (*outputs)[per_out * i + 1].data<float>();
    float* s2 = per_out > 2 ? (*outputs)[per_out * i + 2].data<float>() : nullptr;
    const Update step{rule, static_cast<float>(number(update[5 + 2 * i])),
                      static_cast<float>(number(update[6 + 2 * i])),
                      static_cast<float>(number(update[0])), static_cast<float>(number(update[1])),
                      static_cast<float>(number(update[2])), static_cast<float>(number(update[3])),
                      static_cast<float>(number(update[4]))};
    const Totals t = project_weight<true>(p, w, l, sizes[i], stats, true, [&](int64_t at, int64_t length) {
      return step.row(w + at, grad + at, s1 + at, s2 == nullptr ? nullptr : s2 + at, length);
    });
    if (stats) write_stats(&(*outputs)[per_out * count + i], t.moved, t.total, t.largest, l.units());
  });
  return MX_SUCCESS;
}

}  // namespace

REGISTER_OP(gc_project_rows)
    .setParseAttrs(project_parse)
    .setInferType(project_type)
    .setInferShape(project_shape)
    .setForward(project_forward, "cpu");

REGISTER_OP(gc_update_project_rows)
    .setParseAttrs(update_parse)
    .setInferType(update_type)
    .setInferShape(update_shape)
    .setForward(update_forward, "cpu");

MXReturnValue initialize(int version) {
  return version >= 10900 ? MX_SUCCESS : MX_FAIL;
}
