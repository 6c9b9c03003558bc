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
// gc_sgd_mom_project_rows: the projection fused into SGD with momentum. Inputs (w_i, grad_i,
//   mom_i), outputs (w_i, mom_i), in place only. Per row:
//     g = rescale_grad * grad (clipped to [-clip_gradient, clip_gradient] if clip_gradient >= 0)
//     mom = momentum * mom - lr * wd * w - lr * g;   w = w + mom      (MXNet's sgd_mom_update)
//   accumulating the new row's sum of squares, then the projection while the row is in cache.
//
// Attributes (few: MXNet marshals every attribute on every call): "rows" holds one
// "units,mode,lo,hi,rate,rtol,ord" entry per weight (ord 1, 2, or 0 for the max norm),
// separated by ";". The SGD operator adds
// "update" = "momentum,rescale_grad,clip_gradient,lr_1,wd_1,lr_2,wd_2,...".
// With "stats" = "1" both operators have one more output per weight, after the others: a
// float32 array of 3, (fraction of rows the projection changed, largest and mean row norm
// after it). The norm is the band's (by "ord") in mode "norm", L2 in the elementwise modes.
// Build (gluon_constraints/fused.py does it): g++ -shared -fPIC -std=c++17 -O3 -fopenmp
//   -Wl,-Bsymbolic -Wl,--version-script=exports.map project_rows.cc <mxnet>/src/lib_api.cc
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


struct SGDUpdate {
  float lr, wd, momentum, rescale, clip;

  // One SGD-momentum update of a row in place, returning the new row's sum of squares.
  double row(float* w, const float* grad, float* mom, int64_t length) const {
    double sum = 0.0;
#pragma omp simd reduction(+ : sum)
    for (int64_t j = 0; j < length; ++j) {
      float g = rescale * grad[j];
      if (clip >= 0.0f) g = g > clip ? clip : (g < -clip ? -clip : g);
      const float m = momentum * mom[j] - lr * wd * w[j] - lr * g;
      mom[j] = m;
      const float updated = w[j] + m;
      w[j] = updated;
      sum += static_cast<double>(updated) * updated;
    }
    return sum;
  }
};

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

// -- gc_sgd_mom_project_rows -----------------------------------------------------------------

MXReturnValue sgd_parse(const Attributes& attrs, int* num_in, int* num_out) {
  const auto count = weight_count(attrs);
  *num_in = 3 * count;
  *num_out = (with_stats(attrs) ? 3 : 2) * count;
  return MX_SUCCESS;
}

MXReturnValue sgd_type(const Attributes& attrs, std::vector<int>* in_types,
                       std::vector<int>* out_types) {
  for (auto& t : *out_types) t = kFloat32;
  return all_float32("gc_sgd_mom_project_rows", *in_types);
}

MXReturnValue sgd_shape(const Attributes& attrs, std::vector<std::vector<unsigned int>>* in_shapes,
                        std::vector<std::vector<unsigned int>>* out_shapes) {
  const size_t count = in_shapes->size() / 3;
  for (size_t i = 0; i < count; ++i) {
    (*out_shapes)[2 * i] = (*in_shapes)[3 * i];
    (*out_shapes)[2 * i + 1] = (*in_shapes)[3 * i + 2];
  }
  for (size_t i = 2 * count; i < out_shapes->size(); ++i) (*out_shapes)[i] = {3};
  return MX_SUCCESS;
}

MXReturnValue sgd_forward(const Attributes& attrs, std::vector<MXTensor>* inputs,
                          std::vector<MXTensor>* outputs, const OpResource& res) {
  const auto projections = parse_projections(attrs);
  const auto update = split(attrs.at("update"), ',');
  const auto momentum = static_cast<float>(number(update[0]));
  const auto rescale = static_cast<float>(number(update[1]));
  const auto clip = static_cast<float>(number(update[2]));
  const bool stats = with_stats(attrs);
  for (size_t i = 0; i < projections.size(); ++i) {
    const RowProjection& p = projections[i];
    float* w = (*outputs)[2 * i].data<float>();
    float* mom = (*outputs)[2 * i + 1].data<float>();
    const float* grad = (*inputs)[3 * i + 1].data<float>();
    if (w != (*inputs)[3 * i].data<float>() || mom != (*inputs)[3 * i + 2].data<float>()) {
      MX_ERROR_MSG << "gc_sgd_mom_project_rows runs in place only (out= its weights and momenta)";
      return MX_FAIL;
    }
    const int64_t size = (*inputs)[3 * i].size();
    const int64_t units = p.mode == "norm" || stats ? p.units : 1;
    const int64_t length = row_length("gc_sgd_mom_project_rows", size, units);
    if (length < 0) return MX_FAIL;
    const SGDUpdate step{static_cast<float>(number(update[3 + 2 * i])),
                         static_cast<float>(number(update[4 + 2 * i])), momentum, rescale, clip};
    double moved = 0.0, total = 0.0, largest = 0.0;
#pragma omp parallel for schedule(static) if (size >= 65536) \
    reduction(+ : moved, total) reduction(max : largest)
    for (int64_t u = 0; u < units; ++u) {
      const int64_t at = u * length;
      const double sum = step.row(w + at, grad + at, mom + at, length);
      const RowOutcome r = p.finish_row(w + at, length, p.ord == 2 ? std::sqrt(sum) : p.norm(w + at, length),
                                        stats);
      moved += r.moved;
      total += r.norm;
      largest = std::fmax(largest, r.norm);
    }
    if (stats) write_stats(&(*outputs)[2 * projections.size() + i], moved, total, largest, units);
  }
  return MX_SUCCESS;
}

}  // namespace

REGISTER_OP(gc_project_rows)
    .setParseAttrs(project_parse)
    .setInferType(project_type)
    .setInferShape(project_shape)
    .setForward(project_forward, "cpu");

REGISTER_OP(gc_sgd_mom_project_rows)
    .setParseAttrs(sgd_parse)
    .setInferType(sgd_type)
    .setInferShape(sgd_shape)
    .setForward(sgd_forward, "cpu");

MXReturnValue initialize(int version) {
  return version >= 10900 ? MX_SUCCESS : MX_FAIL;
}
