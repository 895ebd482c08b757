// The parts of the ssm_tools._tools module, each bound in its own file and called from module.cpp.
#pragma once
#include <pybind11/pybind11.h>

namespace ssm_tools {

void bind_vocab(pybind11::module_& m);         // vocab.cpp: token ids, token_name
void bind_tools(pybind11::module_& m);         // tools.cpp: Tool (subclassable), the C++ tools
void bind_env(pybind11::module_& m);           // env.cpp: Env, reset/step/replay/rollout, transcripts
void bind_code_sandbox(pybind11::module_& m);  // code_sandbox.cpp (coding task): CodeSandbox

}  // namespace ssm_tools
