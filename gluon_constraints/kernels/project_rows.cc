// Fused, in-place projections of row slices for gluon-constraints.
//
// Each weight is viewed as (units, size / units) row-major: every row is one output unit's
// slice. A row is rescaled only if its norm n (L1, L2 or max, by "ord") lies outside the band
//   [lo * (1 - rtol), hi * (1 + rtol)]      (n = 0 is never rescaled)
// by  scale = rate * t / n + (1 - rate),  t = hi above the band, lo below it.
// MaxNorm(c) is lo=0, hi=c, rate=1; UnitNorm is lo=hi=1; MinMaxNorm is itself. Mode "nonneg"
// maps w to w * (w >= 0) elementwise, mode "clip" to min(max(w, lo), hi); mode "none" leaves
// the weight alone.
//
// gc_project_rows: inputs w_1..w_k, outputs o_1..o_k of the same shapes. Per row, one pass
//   while the row is in cache: the sum of squares (in double), then the rescale. Called in place
//   (out= the inputs), rows already inside the band are not written at all.
// gc_update_project_rows: the projection fused into one of MXNet's updates ("rule"). Inputs
//   (w_i, grad_i, state_i...), outputs (w_i, state_i...), in place only; the states are
//   sgd_mom: (mom); nag_mom: (mom); adam: (mean, var); rmsprop: (n). Per row, with
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
//   new row's sum of squares, then the projection while the row is in cache.
//
// Attributes (few: MXNet marshals every attribute on every call): "rows" holds one
// "units,mode,lo,hi,rate,rtol,ord" entry per weight (ord 1, 2, or 0 for the max norm),
// separated by ";". The update operator adds "rule" and
// "update" = "rescale_grad,clip_gradient,h1,h2,h3,lr_1,wd_1,lr_2,wd_2,..." with the rule's
// hyperparameters h (sgd_mom, nag_mom: momentum; adam: beta1, beta2, epsilon; rmsprop: gamma1,
// epsilon, clip_weights; unused ones 0).
// With "stats" = "1" both operators have one more output per weight, after the others: a
// float32 array of 3, (fraction of rows the projection changed, largest and mean row norm
// after it). The norm is the band's (by "ord") in mode "norm", L2 in the elementwise modes.
// Build (gluon_constraints/kernels/library.py does it): g++ -shared -fPIC -std=c++17 -O3
//   -march=native -ffp-contract=off -fno-math-errno -fopenmp -Wl,-Bsymbolic
//   -Wl,--version-script=exports.map project_rows.cc <mxnet>/src/lib_api.cc
//   -I <mxnet>/include -o libgc_project_rows.so

#include <cmath>
#include <cstdlib>
#include <sstream>
#include <string>
#include <vector>

#include "mxnet/lib_api.h"

using namespace mxnet::ext;

namespace {

using Attributes = std::unordered_map<std::string, std::string>;

std::vector<std::string> split(const std::string& text, char separator) {
  std::vector<std::string> parts;
  std::stringstream stream(text);
  std::string item;
  while (std::getline(stream, item, separator)) parts.push_back(item);
  return parts;
}

double number(const std::string& text) { return std::strtod(text.c_str(), nullptr); }

int weight_count(const Attributes& attrs) {
  return static_cast<int>(split(attrs.at("rows"), ';').size());
}

double sum_of_squares(const float* row, int64_t length) {
  double sum = 0.0;
#pragma omp simd reduction(+ : sum)
  for (int64_t j = 0; j < length; ++j) sum += static_cast<double>(row[j]) * row[j];
  return sum;
}

// What the projection did to one row.
struct RowOutcome {
  bool moved;
  double norm;  // after the projection
};

// What to do with the rows of one weight.
struct RowProjection {
  int64_t units;
  std::string mode;
  double lo, hi, rate, rtol;
  int ord;  // 1, 2, or 0 for the max norm

  // The row's norm; for ord 2, from its sum of squares when the caller has it.
  double norm(const float* row, int64_t length) const {
    if (ord == 2) return std::sqrt(sum_of_squares(row, length));
    double n = 0.0;
    if (ord == 1) {
#pragma omp simd reduction(+ : n)
      for (int64_t j = 0; j < length; ++j) n += std::fabs(static_cast<double>(row[j]));
    } else {
      for (int64_t j = 0; j < length; ++j) n = std::fmax(n, std::fabs(static_cast<double>(row[j])));
    }
    return n;
  }

  double scale(double n) const {
    if (n > hi * (1.0 + rtol)) return rate * (hi / n) + (1.0 - rate);
    if (n > 0.0 && n < lo * (1.0 - rtol)) return rate * (lo / n) + (1.0 - rate);
    return 1.0;
  }

  // Project one row in place, given the row's norm (unused by the elementwise modes); with
  // `stats`, also say whether it moved and its norm after the projection.
  RowOutcome finish_row(float* row, int64_t length, double n, bool stats) const {
    if (mode == "norm") {
      const double s = scale(n);
      if (s != 1.0) {
        const float f = static_cast<float>(s);
        for (int64_t j = 0; j < length; ++j) row[j] *= f;
      }
      return {s != 1.0, n * s};
    }
    const double before = stats ? sum_of_squares(row, length) : 0.0;
    if (mode == "nonneg") {
      for (int64_t j = 0; j < length; ++j) row[j] *= static_cast<float>(row[j] >= 0.0f);
    } else if (mode == "clip") {
      const float a = static_cast<float>(lo), b = static_cast<float>(hi);
      for (int64_t j = 0; j < length; ++j) row[j] = row[j] < a ? a : (row[j] > b ? b : row[j]);
    }
    if (!stats) return {false, 0.0};
    const double after = sum_of_squares(row, length);
    return {after != before, std::sqrt(after)};
  }
};

bool with_stats(const Attributes& attrs) {
  const auto found = attrs.find("stats");
  return found != attrs.end() && found->second == "1";
}

// One weight's stats output: (moved rows / units, largest norm, total norm / units).
void write_stats(MXTensor* out, double moved, double total, double largest, int64_t units) {
  float* o = out->data<float>();
  o[0] = static_cast<float>(moved / units);
  o[1] = static_cast<float>(largest);
  o[2] = static_cast<float>(total / units);
}

std::vector<RowProjection> parse_projections(const Attributes& attrs) {
  std::vector<RowProjection> projections;
  for (const auto& entry : split(attrs.at("rows"), ';')) {
    const auto f = split(entry, ',');
    projections.push_back({static_cast<int64_t>(number(f[0])), f[1], number(f[2]), number(f[3]),
                           number(f[4]), number(f[5]), static_cast<int>(number(f[6]))});
  }
  return projections;
}

// Row length of a weight of `size` elements, or -1 (with an error message) if it does not split.
int64_t row_length(const char* op, int64_t size, int64_t units) {
  if (units <= 0 || size % units != 0) {
    MX_ERROR_MSG << op << ": " << size << " elements do not split into " << units << " rows";
    return -1;
  }
  return size / units;
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
  const auto projections = parse_projections(attrs);
  const bool stats = with_stats(attrs);
  for (size_t i = 0; i < projections.size(); ++i) {
    const RowProjection& p = projections[i];
    const float* in = (*inputs)[i].data<float>();
    float* out = (*outputs)[i].data<float>();
    const int64_t size = (*inputs)[i].size();
    if (in != out)
      for (int64_t j = 0; j < size; ++j) out[j] = in[j];
    if (p.mode == "none") continue;
    const int64_t units = p.mode == "norm" || stats ? p.units : 1;
    const int64_t length = row_length("gc_project_rows", size, units);
    if (length < 0) return MX_FAIL;
    double moved = 0.0, total = 0.0, largest = 0.0;
#pragma omp parallel for schedule(static) if (size >= 65536) \
    reduction(+ : moved, total) reduction(max : largest)
    for (int64_t u = 0; u < units; ++u) {
      float* row = out + u * length;
      const RowOutcome r = p.finish_row(row, length, p.mode == "norm" ? p.norm(row, length) : 0.0, stats);
      moved += r.moved;
      total += r.norm;
      largest = std::fmax(largest, r.norm);
    }
    if (stats) write_stats(&(*outputs)[projections.size() + i], moved, total, largest, units);
  }
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
  Update::Rule rule;
  if (!parse_rule(attrs, &rule)) return MX_FAIL;
  const auto projections = parse_projections(attrs);
  const auto update = split(attrs.at("update"), ',');
  const size_t per_in = inputs_per_weight(rule), per_out = per_in - 1;
  const bool stats = with_stats(attrs);
  for (size_t i = 0; i < projections.size(); ++i) {
    const RowProjection& p = projections[i];
    float* w = (*outputs)[per_out * i].data<float>();
    const float* grad = (*inputs)[per_in * i + 1].data<float>();
    float* s1 = (*outputs)[per_out * i + 1].data<float>();
    float* s2 = per_out > 2 ? (*outputs)[per_out * i + 2].data<float>() : nullptr;
    bool in_place = w == (*inputs)[per_in * i].data<float>();
    for (size_t k = 1; k < per_out; ++k)
      in_place = in_place && (*outputs)[per_out * i + k].data<float>() == (*inputs)[per_in * i + 1 + k].data<float>();
    if (!in_place) {
      MX_ERROR_MSG << "gc_update_project_rows runs in place only (out= its weights and states)";
      return MX_FAIL;
    }
    const int64_t size = (*inputs)[per_in * i].size();
    const int64_t units = p.mode == "norm" || stats ? p.units : 1;
    const int64_t length = row_length("gc_update_project_rows", size, units);
    if (length < 0) return MX_FAIL;
    const Update step{rule, static_cast<float>(number(update[5 + 2 * i])),
                      static_cast<float>(number(update[6 + 2 * i])),
                      static_cast<float>(number(update[0])), static_cast<float>(number(update[1])),
                      static_cast<float>(number(update[2])), static_cast<float>(number(update[3])),
                      static_cast<float>(number(update[4]))};
    double moved = 0.0, total = 0.0, largest = 0.0;
#pragma omp parallel for schedule(static) if (size >= 65536) \
    reduction(+ : moved, total) reduction(max : largest)
    for (int64_t u = 0; u < units; ++u) {
      const int64_t at = u * length;
      const double sum = step.row(w + at, grad + at, s1 + at, s2 == nullptr ? nullptr : s2 + at, length);
      const RowOutcome r = p.finish_row(w + at, length, p.ord == 2 ? std::sqrt(sum) : p.norm(w + at, length),
                                        stats);
      moved += r.moved;
      total += r.norm;
      largest = std::fmax(largest, r.norm);
    }
    if (stats) write_stats(&(*outputs)[per_out * projections.size() + i], moved, total, largest, units);
  }
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
