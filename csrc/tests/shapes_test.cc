// The shape contract of shapes.h: the layout of every output, and the message
// of every rejection, which the bindings pass on to their callers unchanged.
#include "shapes.h"

#include <cstdint>
#include <cstdio>
#include <string>

namespace {

using keras_vae::Dims;
using keras_vae::DimsStyle;
using keras_vae::ReparamDims;

int g_failures = 0;

void expect_eq(const std::string& got, const std::string& want, int line) {
  if (got != want) {
    ++g_failures;
    std::fprintf(stderr, "shapes_test.cc:%d: got \"%s\", want \"%s\"\n", line,
                 got.c_str(), want.c_str());
  }
}
#define EXPECT_EQ(got, want) expect_eq((got), (want), __LINE__)

std::string dims_of(const Dims& d) {
  return keras_vae::format_dims(d, DimsStyle::kList);
}

void layout() {
  ReparamDims r;
  EXPECT_EQ(keras_vae::reparam_dims({2, 3, 5}, {2, 3, 5}, 4, &r), "");
  EXPECT_EQ(dims_of(r.params), "[2,3,5]");
  EXPECT_EQ(dims_of(r.z), "[4,2,3,5]");
  EXPECT_EQ(dims_of(r.kl), "[2,3]");
  EXPECT_EQ(dims_of(r.log_ratio), "[4,2,3]");
  EXPECT_EQ(std::to_string(r.shape.num_samples) + " " +
                std::to_string(r.shape.rows) + " " +
                std::to_string(r.shape.dim),
            "4 6 5");
  // Rank 1: one row, scalar kl.
  EXPECT_EQ(keras_vae::reparam_dims({7}, {7}, 1, &r), "");
  EXPECT_EQ(dims_of(r.kl), "[]");
  EXPECT_EQ(dims_of(r.log_ratio), "[1]");
  EXPECT_EQ(std::to_string(r.shape.rows), "1");
  // D == 0 keeps the rows: kl and log_ratio are empty sums, not empty arrays.
  EXPECT_EQ(keras_vae::reparam_dims({3, 0}, {3, 0}, 2, &r), "");
  EXPECT_EQ(std::to_string(r.shape.rows), "3");
  EXPECT_EQ(dims_of(r.log_ratio), "[2,3]");
  // Pointer and rank, as framework shapes come.
  const int64_t dims[2] = {2, 9};
  EXPECT_EQ(keras_vae::reparam_dims(dims, 2, dims, 2, 3, &r), "");
  EXPECT_EQ(dims_of(r.z), "[3,2,9]");
}

void rejections() {
  ReparamDims r;
  EXPECT_EQ(keras_vae::reparam_dims({}, {}, 1, &r),
            "mean must have rank >= 1 ([..., D]), got shape []");
  EXPECT_EQ(keras_vae::reparam_dims({2, 3}, {2, 4}, 1, &r),
            "mean and log_var must have the same shape, got mean [2,3] and "
            "log_var [2,4]");
  EXPECT_EQ(keras_vae::reparam_dims({2, 3}, {2, 3, 1}, 1, &r),
            "mean and log_var must have the same shape, got mean [2,3] and "
            "log_var [2,3,1]");
  EXPECT_EQ(keras_vae::reparam_dims({2, 3}, {2, 3}, 0, &r),
            "num_samples must be >= 1, got 0");
  EXPECT_EQ(keras_vae::reparam_dims({2, 3}, {2, 3}, -4, &r),
            "num_samples must be >= 1, got -4");
  EXPECT_EQ(keras_vae::reparam_dims({2, -1}, {2, -1}, 1, &r),
            "mean must have non-negative dimensions, got [2,-1]");
  const int64_t big = int64_t{1} << 31;
  EXPECT_EQ(keras_vae::reparam_dims({big, big}, {big, big}, 4, &r),
            "z would have more than 2^63 - 1 elements: num_samples 4 times "
            "mean [2147483648,2147483648]");
  // With D == 0, z is empty but log_ratio [K, ...] still overflows.
  EXPECT_EQ(keras_vae::reparam_dims({big, big, 0}, {big, big, 0}, 4, &r)
                .substr(0, 16),
            "z would have mor");
  EXPECT_EQ(keras_vae::reparam_dims({big, big}, {big, big}, 1, &r), "");
}

void outputs_and_gradients() {
  ReparamDims r;
  keras_vae::reparam_dims({3, 4}, {3, 4}, 2, &r);
  EXPECT_EQ(keras_vae::check_forward_outputs(r, {2, 3, 4}, {3}, {2, 3}), "");
  EXPECT_EQ(keras_vae::check_forward_outputs(r, {1, 3, 4}, {3}, {2, 3},
                                             DimsStyle::kTuple),
            "z must have shape (2, 3, 4), got (1, 3, 4)");
  EXPECT_EQ(keras_vae::check_forward_outputs(r, {2, 3, 4}, {}, {2, 3},
                                             DimsStyle::kTuple),
            "kl must have shape (3,), got ()");
  EXPECT_EQ(keras_vae::check_forward_outputs(r, {2, 3, 4}, {3}, {3, 2}),
            "log_ratio must have shape [2,3], got [3,2]");
  EXPECT_EQ(keras_vae::check_upstream_grads(r, {2, 3, 4}, {3}, {2, 3}), "");
  // Same size, other shape: the full shapes are compared, not the sizes.
  EXPECT_EQ(keras_vae::check_upstream_grads(r, {2, 4, 3}, {3}, {2, 3}),
            "grad_z must have shape [2,3,4], got [2,4,3]");
  EXPECT_EQ(keras_vae::check_upstream_grads(r, {2, 3, 4}, {3, 1}, {2, 3}),
            "grad_kl must have shape [3], got [3,1]");
  EXPECT_EQ(keras_vae::check_upstream_grads(r, {2, 3, 4}, {3}, {6}),
            "grad_log_ratio must have shape [2,3], got [6]");
  EXPECT_EQ(keras_vae::expect_dims("grad_mean", r.params, {3, 4}), "");
  EXPECT_EQ(keras_vae::expect_dims("seed", {2}, {3}, DimsStyle::kTuple),
            "seed must have shape (2,), got (3,)");
}

}  // namespace

int main() {
  layout();
  rejections();
  outputs_and_gradients();
  if (g_failures > 0) {
    std::fprintf(stderr, "%d shape check(s) failed\n", g_failures);
    return 1;
  }
  std::printf("shapes_test: all checks passed\n");
  return 0;
}
