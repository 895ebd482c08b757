// The Python module ssm_tools._C. It exposes no Python functions: importing it loads this shared
// library, whose static initialisers register the ops (registration.cpp) and their CPU/CUDA kernels
// with the dispatcher. Python reaches them as torch.ops.ssm_tools.*. The module's one attribute,
// SCAN_CHUNK, is kScanChunk: the positions per checkpoint of the forward's `saved` output, which the
// fake kernels need for its shape.
#include <Python.h>

#include "kernels/selective_scan_params.h"

extern "C" PyObject* PyInit__C(void) {
  static struct PyModuleDef module_def = {PyModuleDef_HEAD_INIT, "_C", nullptr, -1, nullptr};
  PyObject* module = PyModule_Create(&module_def);
  if (module && PyModule_AddIntConstant(module, "SCAN_CHUNK", kScanChunk) != 0) {
    Py_DECREF(module);
    return nullptr;
  }
  return module;
}
