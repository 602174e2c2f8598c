// What the kernel tests share: a failure counter with messages that name
// the line, deterministic test values and a tolerance check.
#ifndef KERAS_VAE_CSRC_TESTS_TEST_SUPPORT_H_
#define KERAS_VAE_CSRC_TESTS_TEST_SUPPORT_H_

#include <cmath>
#include <cstdint>
#include <cstdio>

namespace keras_vae_test {

inline int g_failures = 0;

// Counts a failure and prints the first few, so that one bug does not bury
// the output.
#define EXPECT(cond, ...)                                            \
  do {                                                               \
    if (!(cond)) {                                                   \
      if (++::keras_vae_test::g_failures <= 30) {                    \
        std::fprintf(stderr, "%s:%d: ", __FILE__, __LINE__);         \
        std::fprintf(stderr, __VA_ARGS__);                           \
        std::fprintf(stderr, "\n");                                  \
      }                                                              \
    }                                                                \
  } while (0)

// Deterministic test values in [lo, hi].
inline double pattern(uint64_t i, double lo, double hi) {
  uint64_t x = i * 0x9E3779B97F4A7C15ull + 0x2545F4914F6CDD1Dull;
  x ^= x >> 29;
  x *= 0xBF58476D1CE4E5B9ull;
  x ^= x >> 32;
  return lo + (hi - lo) * static_cast<double>(x % 10007) / 10006.0;
}

// A storage type (16-bit ones convert through float) as double.
template <typename T>
double to_double(T x) {
  return static_cast<double>(static_cast<float>(x));
}
template <>
inline double to_double<double>(double x) {
  return x;
}

// got within tol of want, relative to `scale`, the magnitude of the terms
// that were summed (which bounds the rounding of any summation order).
inline bool near(double got, double want, double scale, double tol) {
  return std::fabs(got - want) <= tol * (1.0 + std::fabs(scale));
}

}  // namespace keras_vae_test

#endif  // KERAS_VAE_CSRC_TESTS_TEST_SUPPORT_H_
