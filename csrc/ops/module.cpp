// The Python module ssm_tools._C. It exposes no Python functions: importing it loads this shared
// library, whose static initialisers register the ops (registration.cpp) and their CPU/CUDA kernels
// with the dispatcher. Python reaches them as torch.ops.ssm_tools.*.
#include <Python.h>

extern "C" PyObject* PyInit__C(void) {
  static struct PyModuleDef module_def = {PyModuleDef_HEAD_INIT, "_C", nullptr, -1, nullptr};
  return PyModule_Create(&module_def);
}
