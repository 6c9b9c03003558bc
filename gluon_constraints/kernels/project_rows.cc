// Fused, in-place projections of per-unit slices for gluon-constraints.
//
// Each weight's units are described by a layout (G, A, U): the weight viewed as
// (G, A, U, size / (G * A * U)), unit (g, u) is the slice [g, :, u, :], A runs of contiguous
// elements. Rows (a Dense weight, a convolution's filters) are (units, 1, 1); a transposed
// convolution's output channels (in, out, *kernel) are (1, in, out). A unit is rescaled only if
// its norm n (L1, L2 or max, by "ord") lies outside the band
//   [lo * (1 - rtol), hi * (1 + rtol)]      (n = 0 is never rescaled)
// by  scale = rate * t / n + (1 - rate),  t = hi above the band, lo below it, each entry
// multiplied in double and rounded once to float (norms accumulate in double too), so every
// finite unit stays finite, however small or large.
// MaxNorm(c) is lo=0, hi=c, rate=1; UnitNorm is lo=hi=1; MinMaxNorm is itself. Mode "nonneg"
// maps w to w * (w >= 0) elementwise, mode "clip" to min(max(w, lo), hi); mode "none" leaves
// the weight alone.
//
// Two calls, queued on MXNet's engine (gc_project and gc_update below) rather than registered
// as MXNet operators: MXNet gives every library operator a temporary-space and a random-number
// resource, shared by all CPU operators, so each call would wait for the backward pass still
// queued (and the engine would order all calls one after another), which costs a multi-context
// step its overlap of updates with the backward pass. A queued call waits only for its arrays.
//
// gc_project_rows: weights w_1..w_k, projected in place. Per unit, one pass while the unit is in
//   cache: the sum of squares (in double), then the rescale; units already inside the band are
//   not written at all.
// gc_update_project_rows: the projection fused into one of MXNet's updates ("rule"). Per weight
//   (w_i, grad_i, state_i...), updated in place; the states are
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
// "rows" holds one "G/A/U,mode,lo,hi,rate,rtol,ord" entry per weight (ord 1, 2, or 0 for the
// max norm), separated by ";". Weights under 65536 elements run one per thread (several at once
// from 2^20 elements in all); larger ones spread their units over the threads. The update adds
// "rule" and "update" = "rescale_grad,clip_gradient,h1,h2,h3,lr_1,wd_1,lr_2,wd_2,..." with the
// rule's hyperparameters h (sgd_mom, nag_mom: momentum; adam: beta1, beta2, epsilon; rmsprop:
// gamma1, epsilon, clip_weights; unused ones 0).
// With stats, each weight has one more array, after all the others: a float32 array of 3
// receiving (fraction of units the projection changed, largest and mean unit norm after it).
// The norm is the band's (by "ord") in mode "norm", L2 in the elementwise modes.
// A malformed call fails when it is queued, and queues nothing; an array that cannot be read in
// place when the call runs (MKL-DNN's blocked layout) fails the call there, and MXNet raises
// the failure at the next wait on its arrays.
// Build (gluon_constraints/kernels/library.py does it): g++ -shared -fPIC -std=c++17 -O3
//   -march=native -ffp-contract=off -fno-math-errno -fopenmp -Wl,-Bsymbolic
//   -Wl,--version-script=exports.map project_rows.cc -I <mxnet>/include -o libgc_project_rows.so

#include <algorithm>
#if __has_include(<charconv>)
#include <charconv>
#endif
#include <cmath>
#include <cstdio>
#include <cstdlib>
#include <memory>
#include <stdexcept>
#include <string>
#include <string_view>
#include <vector>

#include "dlpack/dlpack.h"

namespace {

// A call that cannot run: its message names what is wrong.
struct Failure : std::runtime_error {
  using std::runtime_error::runtime_error;
};

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

// The number `field` holds, exactly as written (Python's repr of a float, or an integer).
double number(std::string_view field) {
  double value = 0.0;
  const char* end = field.data() + field.size();
#if defined(__cpp_lib_to_chars)  // libstdc++ 11+: several times faster than strtod
  const auto parsed = std::from_chars(field.data(), end, value);
  const bool whole = parsed.ec == std::errc() && parsed.ptr == end;
#else  // strtod stops at the separator after the field (the text is NUL-terminated)
  char* stop = nullptr;
  value = std::strtod(field.data(), &stop);
  const bool whole = !field.empty() && stop == end;
#endif
  if (!whole) throw Failure("malformed number '" + std::string(field) + "'");
  return value;
}

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
    double factors[kBlock];
    bool any = false;
    for (int64_t k = 0; k < count; ++k) {
      const double n = p.ord == 2 ? std::sqrt(measured[k]) : measured[k];
      const double s = p.scale(n);
      factors[k] = s;
      any = any || s != 1.0;
      if (stats) totals->add(s != 1.0, n * s);
    }
    if (!any) return;
    for (int64_t a = 0; a < l.segments; ++a) {
      for (int64_t k = 0; k < count; ++k) {
        if (factors[k] == 1.0) continue;
        rescale(w + l.offset(first + k, a), l.length, factors[k]);
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


// -- parsing (when a call is queued: a malformed call fails at once and queues nothing) --------

std::vector<UnitProjection> parse_projections(const char* rows) {
  std::vector<UnitProjection> out;
  for (const auto& entry : split(rows, ';')) {
    const auto f = split(entry, ',');
    const auto shape = split(f.empty() ? entry : f[0], '/');
    UnitProjection::Mode mode;
    if (f.size() != 7 || shape.size() != 3) throw Failure("malformed rows entry '" + std::string(entry) + "'");
    if (f[1] == "norm") mode = UnitProjection::kNorm;
    else if (f[1] == "nonneg") mode = UnitProjection::kNonNeg;
    else if (f[1] == "clip") mode = UnitProjection::kClip;
    else if (f[1] == "none") mode = UnitProjection::kNone;
    else throw Failure("unknown mode '" + std::string(f[1]) + "'");
    out.push_back({static_cast<int64_t>(number(shape[0])), static_cast<int64_t>(number(shape[1])),
                   static_cast<int64_t>(number(shape[2])), mode, number(f[2]), number(f[3]),
                   number(f[4]), number(f[5]), static_cast<int>(number(f[6]))});
  }
  return out;
}

Update::Rule parse_rule(const std::string& name) {
  if (name == "sgd_mom") return Update::kSGDMom;
  if (name == "nag_mom") return Update::kNAGMom;
  if (name == "adam") return Update::kAdam;
  if (name == "rmsprop") return Update::kRMSProp;
  throw Failure("unknown rule '" + name + "'");
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

// Device types of MXNet's CPU contexts: cpu, cpu_pinned, cpu_shared.
bool on_cpu(int dev_type) { return dev_type == 1 || dev_type == 3 || dev_type == 5; }

// One array's memory while a queued call runs. MXNet hands it over only in the plain layout:
// an array MKL-DNN holds in its blocked layout fails (it is never read as if it were plain).
class Memory {
 public:
  explicit Memory(void* handle) {
    if (mxnet_api.to_dlpack(handle, &tensor_) != 0)
      throw Failure(std::string("cannot read an array in place (MKL-DNN may hold it in its blocked "
                                "layout): ") + mxnet_api.last_error());
    const DLTensor& t = tensor_->dl_tensor;
    if (t.dtype.code != kDLFloat || t.dtype.bits != 32 || t.dtype.lanes != 1 || t.strides != nullptr) {
      tensor_->deleter(tensor_);
      throw Failure("its arrays must be compact float32");
    }
    size_ = 1;
    for (int d = 0; d < t.ndim; ++d) size_ *= t.shape[d];
  }
  ~Memory() { tensor_->deleter(tensor_); }
  Memory(const Memory&) = delete;
  Memory& operator=(const Memory&) = delete;

  float* data() const {
    return reinterpret_cast<float*>(static_cast<char*>(tensor_->dl_tensor.data) +
                                    tensor_->dl_tensor.byte_offset);
  }
  int64_t size() const { return size_; }

 private:
  DLManagedTensor* tensor_ = nullptr;
  int64_t size_ = 0;
};

// A queued call: its parsed attributes and its own references to the arrays (so they outlive
// the caller's), released when MXNet drops the call.
struct Call {
  Call(const char* name, bool update, bool stats) : name(name), update(update), stats(stats) {}

  const char* name;
  bool update, stats;
  Update::Rule rule = Update::kSGDMom;
  std::vector<UnitProjection> projections;
  std::vector<double> numbers;  // rescale_grad, clip_gradient, h1, h2, h3, lr_1, wd_1, ...
  int per_weight = 1;           // arrays per weight: 1, or (w, grad, states...)
  std::vector<void*> arrays;    // per weight its arrays, then one stats array per weight

  ~Call() {
    for (void* a : arrays) mxnet_api.free(a);
  }

  size_t count() const { return projections.size(); }
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

Layout layout_of(const UnitProjection& p, int64_t size) {
  const int64_t cells = p.groups * p.segments * p.interleave;
  if (cells <= 0 || size % cells != 0)
    throw Failure(std::to_string(size) + " elements do not split into " + std::to_string(p.groups) +
                  " x " + std::to_string(p.segments) + " x " + std::to_string(p.interleave) + " runs");
  return {p.groups, p.segments, p.interleave, size / cells};
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
    layouts.push_back(layout_of(call.projections[i], sizes.back()));
  }
  const auto& n = call.numbers;
  std::vector<Totals> totals(count);
  for_each_weight(sizes, [&](int64_t i) {
    const UnitProjection& p = call.projections[i];
    float* w = arrays[per * i]->data();
    if (!call.update) {
      if (p.mode == UnitProjection::kNone && !call.stats) return;
      const bool read = p.mode == UnitProjection::kNorm || call.stats;
      totals[i] = project_weight<false>(p, w, layouts[i], sizes[i], call.stats, read,
                                        [](int64_t, int64_t) { return 0.0; });
      return;
    }
    const float* grad = arrays[per * i + 1]->data();
    float* s1 = arrays[per * i + 2]->data();
    float* s2 = per > 3 ? arrays[per * i + 3]->data() : nullptr;
    const Update step{call.rule, static_cast<float>(n[5 + 2 * i]), static_cast<float>(n[6 + 2 * i]),
                      static_cast<float>(n[0]), static_cast<float>(n[1]), static_cast<float>(n[2]),
                      static_cast<float>(n[3]), static_cast<float>(n[4])};
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
void run(void* /* run_context */, void* queued) {
  const Call& call = *static_cast<Call*>(queued);
  try {
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
  Call* queued = call.release();  // MXNet owns it from here: `release` deletes it, even on failure
  if (mxnet_api.push_sync(run, queued, release, &context, read.data(), static_cast<int>(read.size()),
                          written.data(), static_cast<int>(written.size()), nullptr, 0, name) != 0)
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

// Queues gc_project_rows on `weights` (one per "rows" entry, then one stats array per weight
// if `stats`). Returns 0, or -1 with the reason in `message` (nothing queued).
int gc_project(const char* rows, int stats, void** arrays, int count, char* message, int size) {
  try {
    std::unique_ptr<Call> call(new Call("gc_project_rows", false, stats != 0));
    call->projections = parse_projections(rows);
    const int expected = static_cast<int>(call->count()) * (stats ? 2 : 1);
    if (count != expected)
      throw Failure(std::to_string(count) + " arrays for " + std::to_string(call->count()) + " rows entries");
    queue(std::move(call), arrays, count, std::vector<bool>(count, false));
    return 0;
  } catch (const std::exception& error) {
    return failed(error, "gc_project_rows", message, size);
  }
}

// Queues gc_update_project_rows: per weight (w, grad, states...) in `arrays`, then one stats
// array per weight if `stats`; `numbers` = "rescale_grad,clip_gradient,h1,h2,h3,lr_1,wd_1,...".
// Returns 0, or -1 with the reason in `message` (nothing queued).
int gc_update(const char* rule, const char* numbers, const char* rows, int stats, void** arrays,
              int count, char* message, int size) {
  try {
    std::unique_ptr<Call> call(new Call("gc_update_project_rows", true, stats != 0));
    call->rule = parse_rule(rule);
    call->projections = parse_projections(rows);
    call->per_weight = 2 + Update::state_count(call->rule);
    for (const auto& field : split(numbers, ',')) call->numbers.push_back(number(field));
    const size_t weights = call->count();
    if (call->numbers.size() != 5 + 2 * weights)
      throw Failure("\"update\" has " + std::to_string(call->numbers.size()) + " numbers, not " +
                    std::to_string(5 + 2 * weights));
    const int expected = static_cast<int>(weights) * (call->per_weight + (stats ? 1 : 0));
    if (count != expected)
      throw Failure(std::to_string(count) + " arrays for " + std::to_string(weights) + " weights");
    std::vector<bool> read_only(count, false);
    for (size_t i = 0; i < weights; ++i) read_only[call->per_weight * i + 1] = true;  // the gradients
    queue(std::move(call), arrays, count, read_only);
    return 0;
  } catch (const std::exception& error) {
    return failed(error, "gc_update_project_rows", message, size);
  }
}

}  // extern "C"
