// A minimal test harness for the C++ unit tests (no framework to download): TEST(name) registers a
// function, CHECK(cond) records a failure with file:line and keeps going; run_tests.cpp runs them all.
// CHECK is not assert(): it stays on in Release/NDEBUG builds.
#pragma once
#include <cstdio>
#include <functional>
#include <string>
#include <vector>

namespace ssm_tools::testing {

struct TestCase {
  const char* name;
  std::function<void()> fn;
};

inline std::vector<TestCase>& registry() {
  static std::vector<TestCase> tests;
  return tests;
}

inline int& failures() {
  static int count = 0;
  return count;
}

struct Register {
  Register(const char* name, std::function<void()> fn) { registry().push_back({name, std::move(fn)}); }
};

}  // namespace ssm_tools::testing

#define TEST(name)                                                                   \
  static void test_##name();                                                         \
  static ::ssm_tools::testing::Register register_##name(#name, test_##name);         \
  static void test_##name()

#define CHECK(cond)                                                                  \
  do {                                                                               \
    if (!(cond)) {                                                                   \
      std::fprintf(stderr, "%s:%d: CHECK failed: %s\n", __FILE__, __LINE__, #cond);  \
      ++::ssm_tools::testing::failures();                                            \
    }                                                                                \
  } while (0)

// CHECK that `statement` throws `exception_type`.
#define CHECK_THROWS(exception_type, statement)                                      \
  do {                                                                               \
    bool thrown = false;                                                             \
    try {                                                                            \
      statement;                                                                     \
    } catch (const exception_type&) {                                                \
      thrown = true;                                                                 \
    }                                                                                \
    CHECK(thrown && #statement " throws " #exception_type);                          \
  } while (0)
