// The kernels' softplus (csrc/kernels/scan_common.cuh, compiled for the CPU with the stand-ins of
// ../emulate_scan_bwd/fake) against softplus in long double with torch's threshold (v above 20: v),
// over float32 inputs from -104 to 104 (every 61st bit pattern) and the special values. Prints the
// largest relative error and exits 1 if it is above the bound given as argv[1], or if a special value
// differs from log1pf(expf(v)). The CPU's exp and division are exact to rounding; on the GPU, __expf
// and the division add about 2 ulp each (MUFU.EX2, MUFU.RCP).
#include <cmath>
#include <cstdint>
#include <cstdio>
#include <cstdlib>
#include <cstring>
#include "kernels/scan_common.cuh"

static long double reference(float v) { return v > 20.f ? (long double)v : log1pl(expl((long double)v)); }

int main(int argc, char** argv) {
  const double bound = argc > 1 ? atof(argv[1]) : 1e-6;
  double worst = 0;
  float worst_at = 0;
  long count = 0;
  for (int sign = 0; sign < 2; ++sign) {
    const uint32_t top = 0x42d00000u;  // 104.0f
    for (uint32_t bits = 0; bits <= top; bits += 61) {
      const uint32_t b = bits | (sign ? 0x80000000u : 0u);
      float v;
      std::memcpy(&v, &b, 4);
      const long double want = reference(v);
      if (want < 1.2e-38L) continue;  // the GPU flushes such results to 0 (FTZ)
      const double rel = (double)fabsl(((long double)ssm_tools_cuda::softplus(v) - want) / want);
      ++count;
      if (rel > worst) worst = rel, worst_at = v;
    }
  }
  printf("softplus: %ld inputs in [-104, 104], largest relative error %.3g (%.2f ulp of float) at v = %.9g\n",
         count, worst, worst / 5.96e-8, worst_at);
  int bad = worst > bound;
  const float specials[] = {NAN, INFINITY, -INFINITY, 0.f, -0.f, 20.f, 20.000002f, 19.999998f, 88.f, -88.f};
  for (float v : specials) {
    const float got = ssm_tools_cuda::softplus(v), want = v > 20.f ? v : log1pf(expf(v));
    const bool same = (std::isnan(got) && std::isnan(want)) || got == want ||
                      fabsf(got - want) <= 2e-7f * fabsf(want);
    printf("  softplus(%g) = %.9g (log1pf(expf) with the threshold: %.9g)%s\n", v, got, want, same ? "" : "  DIFFERS");
    bad |= !same;
  }
  return bad;
}
