// Runs every TEST of the C++ unit tests (built by .ci/native_checks.sh under ASan + UBSan).
#include <cstdio>

#include "tools/tests/check.h"

int main() {
  using namespace ssm_tools::testing;
  for (const TestCase& test : registry()) {
    const int before = failures();
    test.fn();
    std::printf("%s %s\n", failures() == before ? "ok  " : "FAIL", test.name);
  }
  std::printf("%zu tests, %d failed checks\n", registry().size(), failures());
  return failures() == 0 ? 0 : 1;
}
