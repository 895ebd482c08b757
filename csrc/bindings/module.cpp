// ssm_tools._tools: the tools and the dispatch loop, bound with pybind11 (no torch: results are numpy
// arrays, wrapped into torch tensors by python/ssm_tools/env.py).
#include "bindings/bindings.h"

PYBIND11_MODULE(_tools, m) {
  m.doc() = "ssm-tools tools and batched dispatch loop (C++)";
  ssm_tools::bind_vocab(m);
  ssm_tools::bind_tools(m);
  ssm_tools::bind_env(m);
  ssm_tools::bind_code_sandbox(m);
}
