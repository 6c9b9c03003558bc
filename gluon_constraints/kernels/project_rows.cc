// Fused, in-place projection of row slices for gluon-constraints.
//
// Operator gc_project_rows: inputs w_1..w_k (float32, dense, CPU), outputs o_1..o_k of the same
// shapes; gluon-constraints calls it with out= set to the inputs, so the weights are updated in
// place. Each w_i is viewed as (units_i, size_i / units_i) row-major: every row is one output
// unit's slice. Per row, in one pass while the row is in cache: the sum of squares (accumulated
// in double), then the row is rescaled only if its norm lies outside the band
//   [lo * (1 - rtol), hi * (1 + rtol)]      (n = 0 is never rescaled)
// by  scale = rate * t / n + (1 - rate),  t = hi above the band, lo below it.
// MaxNorm(c) is lo=0, hi=c, rate=1; UnitNorm is lo=hi=1; MinMaxNorm is itself. With mode
// "nonneg" a weight's negative entries become -0.0 (w * (w >= 0)).
// Rows already inside the band are not written at all when the operator runs in place.
//
// Attributes (strings, one comma-separated entry per weight): units, mode, lo, hi, rate, rtol.
//
// Operator gc_sgd_mom_project_rows: the same projection fused into SGD with momentum. Inputs
// (w_i, grad_i, mom_i) for each weight, outputs (w_i, mom_i), called in place. Per row, one pass:
//   g = rescale_grad * grad (clipped to [-clip_gradient, clip_gradient] if clip_gradient >= 0)
//   mom = momentum * mom - lr * wd * w - lr * g;   w = w + mom      (MXNet's sgd_mom_update)
// accumulating the new row's sum of squares, then the rescale above while the row is in cache.
// Mode "none" updates without projecting. Extra attributes: lrs, wds (per weight), momentum,
// rescale_grad, clip_gradient.
// Build (gluon_constraints/fused.py does it): g++ -shared -fPIC -std=c++17 -O3 -fopenmp
//        -Wl,-Bsymbolic -Wl,--version-script=exports.map project_rows.cc <mxnet>/src/lib_api.cc
//        -I <mxnet>/include -o libgc_project_rows.so

#include <cmath>
#include <cstdlib>
#include <sstream>
#include <string>
#include <vector>

#include "mxnet/lib_api.h"

using namespace mxnet::ext;

namespace {

std::vector<std::string> split(const std::string& text) {
  std::vector<std::string> parts;
  std::stringstream stream(text);
  std::string item;
  while (std::getline(stream, item, ',')) parts.push_back(item);
  return parts;
}

std::vector<double> numbers(const std::unordered_map<std::string, std::string>& attrs,
                            const char* key) {
  std::vector<double> values;
  for (const auto& item : split(attrs.at(key))) values.push_back(std::strtod(item.c_str(), nullptr));
  return values;
}

inline double row_scale(double n, double lo, double hi, double rate, double rtol) {
  if (n > hi * (1.0 + rtol)) return rate * (hi / n) + (1.0 - rate);
  if (n > 0.0 && n < lo * (1.0 - rtol)) return rate * (lo / n) + (1.0 - rate);
  return 1.0;
}

void project_norm(const float* in, float* out, int64_t units, int64_t length, double lo,
                  double hi, double rate, double rtol) {
  const bool in_place = in == out;
#pragma omp parallel for schedule(static) if (units * length >= 65536)
  for (int64_t u = 0; u < units; ++u) {
    const float* row = in + u * length;
    float* dst = out + u * length;
    double sum = 0.0;
    for (int64_t j = 0; j < length; ++j) sum += static_cast<double>(row[j]) * row[j];
    const double scale = row_scale(std::sqrt(sum), lo, hi, rate, rtol);
    if (scale != 1.0) {
      const float s = static_cast<float>(scale);
      for (int64_t j = 0; j < length; ++j) dst[j] = row[j] * s;
    } else if (!in_place) {
      for (int64_t j = 0; j < length; ++j) dst[j] = row[j];
    }
  }
}

void project_nonneg(const float* in, float* out, int64_t size) {
#pragma omp parallel for schedule(static) if (size >= 65536)
  for (int64_t j = 0; j < size; ++j) out[j] = in[j] * static_cast<float>(in[j] >= 0.0f);
}

struct Update {
  float lr, wd, momentum, rescale, clip;
};

// One SGD-momentum update of a row, returning the new row's sum of squares.
inline double sgd_row(float* w, const float* grad, float* mom, int64_t length, const Update& u) {
  double sum = 0.0;
  for (int64_t j = 0; j < length; ++j) {
    float g = u.rescale * grad[j];
    if (u.clip >= 0.0f) g = g > u.clip ? u.clip : (g < -u.clip ? -u.clip : g);
    const float m = u.momentum * mom[j] - u.lr * u.wd * w[j] - u.lr * g;
    mom[j] = m;
    const float updated = w[j] + m;
    w[j] = updated;
    sum += static_cast<double>(updated) * updated;
  }
  return sum;
}

void sgd_project(float* w, const float* grad, float* mom, int64_t units, int64_t length,
                 const std::string& mode, double lo, double hi, double rate, double rtol,
                 const Update& u) {
#pragma omp parallel for schedule(static) if (units * length >= 65536)
  for (int64_t r = 0; r < units; ++r) {
    float* row = w + r * length;
    const double sum = sgd_row(row, grad + r * length, mom + r * length, length, u);
    if (mode == "norm") {
      const double scale = row_scale(std::sqrt(sum), lo, hi, rate, rtol);
      if (scale != 1.0) {
        const float s = static_cast<float>(scale);
        for (int64_t j = 0; j < length; ++j) row[j] *= s;
      }
    } else if (mode == "nonneg") {
      for (int64_t j = 0; j < length; ++j) row[j] *= static_cast<float>(row[j] >= 0.0f);
    }
  }
}

MXReturnValue parse_attrs(const std::unordered_map<std::string, std::string>& attrs,
                          int* num_in, int* num_out) {
  const auto count = static_cast<int>(split(attrs.at("units")).size());
  *num_in = count;
  *num_out = count;
  return MX_SUCCESS;
}

MXReturnValue infer_type(const std::unordered_map<std::string, std::string>& attrs,
                         std::vector<int>* in_types, std::vector<int>* out_types) {
  for (size_t i = 0; i < in_types->size(); ++i) {
    if ((*in_types)[i] != kFloat32) {
      MX_ERROR_MSG << "gc_project_rows: input " << i << " must be float32";
      return MX_FAIL;
    }
    (*out_types)[i] = kFloat32;
  }
  return MX_SUCCESS;
}

MXReturnValue infer_shape(const std::unordered_map<std::string, std::string>& attrs,
                          std::vector<std::vector<unsigned int>>* in_shapes,
                          std::vector<std::vector<unsigned int>>* out_shapes) {
  for (size_t i = 0; i < in_shapes->size(); ++i) (*out_shapes)[i] = (*in_shapes)[i];
  return MX_SUCCESS;
}

MXReturnValue forward(const std::unordered_map<std::string, std::string>& attrs,
                      std::vector<MXTensor>* inputs, std::vector<MXTensor>* outputs,
                      const OpResource& res) {
  const auto units = numbers(attrs, "units");
  const auto modes = split(attrs.at("mode"));
  const auto lo = numbers(attrs, "lo"), hi = numbers(attrs, "hi");
  const auto rate = numbers(attrs, "rate"), rtol = numbers(attrs, "rtol");
  for (size_t i = 0; i < inputs->size(); ++i) {
    const float* in = (*inputs)[i].data<float>();
    float* out = (*outputs)[i].data<float>();
    const int64_t size = (*inputs)[i].size();
    if (modes[i] == "nonneg") {
      project_nonneg(in, out, size);
    } else {
      const auto n_units = static_cast<int64_t>(units[i]);
      if (n_units <= 0 || size % n_units != 0) {
        MX_ERROR_MSG << "gc_project_rows: " << size << " elements do not split into " << n_units
                     << " rows";
        return MX_FAIL;
      }
      project_norm(in, out, n_units, size / n_units, lo[i], hi[i], rate[i], rtol[i]);
    }
  }
  return MX_SUCCESS;
}

MXReturnValue sgd_parse_attrs(const std::unordered_map<std::string, std::string>& attrs,
                              int* num_in, int* num_out) {
  const auto count = static_cast<int>(split(attrs.at("units")).size());
  *num_in = 3 * count;
  *num_out = 2 * count;
  return MX_SUCCESS;
}

MXReturnValue sgd_infer_type(const std::unordered_map<std::string, std::string>& attrs,
                             std::vector<int>* in_types, std::vector<int>* out_types) {
  for (size_t i = 0; i < in_types->size(); ++i) {
    if ((*in_types)[i] != kFloat32) {
      MX_ERROR_MSG << "gc_sgd_mom_project_rows: input " << i << " must be float32";
      return MX_FAIL;
    }
  }
  for (auto& t : *out_types) t = kFloat32;
  return MX_SUCCESS;
}

MXReturnValue sgd_infer_shape(const std::unordered_map<std::string, std::string>& attrs,
                              std::vector<std::vector<unsigned int>>* in_shapes,
                              std::vector<std::vector<unsigned int>>* out_shapes) {
  for (size_t i = 0; i < out_shapes->size() / 2; ++i) {
    (*out_shapes)[2 * i] = (*in_shapes)[3 * i];
    (*out_shapes)[2 * i + 1] = (*in_shapes)[3 * i + 2];
  }
  return MX_SUCCESS;
}

MXReturnValue sgd_forward(const std::unordered_map<std::string, std::string>& attrs,
                          std::vector<MXTensor>* inputs, std::vector<MXTensor>* outputs,
                          const OpResource& res) {
  const auto units = numbers(attrs, "units");
  const auto modes = split(attrs.at("mode"));
  const auto lo = numbers(attrs, "lo"), hi = numbers(attrs, "hi");
  const auto rate = numbers(attrs, "rate"), rtol = numbers(attrs, "rtol");
  const auto lrs = numbers(attrs, "lrs"), wds = numbers(attrs, "wds");
  const float momentum = std::strtof(attrs.at("momentum").c_str(), nullptr);
  const float rescale = std::strtof(attrs.at("rescale_grad").c_str(), nullptr);
  const float clip = std::strtof(attrs.at("clip_gradient").c_str(), nullptr);
  for (size_t i = 0; i < units.size(); ++i) {
    MXTensor& weight = (*inputs)[3 * i];
    float* w = (*outputs)[2 * i].data<float>();
    float* mom = (*outputs)[2 * i + 1].data<float>();
    if (w != weight.data<float>() || mom != (*inputs)[3 * i + 2].data<float>()) {
      MX_ERROR_MSG << "gc_sgd_mom_project_rows runs in place only (out= its weights and momenta)";
      return MX_FAIL;
    }
    const int64_t size = weight.size();
    const auto n_units = static_cast<int64_t>(units[i]);
    if (n_units <= 0 || size % n_units != 0) {
      MX_ERROR_MSG << "gc_sgd_mom_project_rows: " << size << " elements do not split into "
                   << n_units << " rows";
      return MX_FAIL;
    }
    const Update u{static_cast<float>(lrs[i]), static_cast<float>(wds[i]), momentum, rescale, clip};
    sgd_project(w, (*inputs)[3 * i + 1].data<float>(), mom, n_units, size / n_units, modes[i],
                lo[i], hi[i], rate[i], rtol[i], u);
  }
  return MX_SUCCESS;
}

}  // namespace

REGISTER_OP(gc_sgd_mom_project_rows)
    .setParseAttrs(sgd_parse_attrs)
    .setInferType(sgd_infer_type)
    .setInferShape(sgd_infer_shape)
    .setForward(sgd_forward, "cpu");

REGISTER_OP(gc_project_rows)
    .setParseAttrs(parse_attrs)
    .setInferType(infer_type)
    .setInferShape(infer_shape)
    .setForward(forward, "cpu");

MXReturnValue initialize(int version) {
  return version >= 10900 ? MX_SUCCESS : MX_FAIL;
}
