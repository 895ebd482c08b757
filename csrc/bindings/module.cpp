// ssm_tools._tools: the tools and the dispatch loop, bound with pybind11.
#include <pybind11/pybind11.h>
#include <pybind11/stl.h>

#include "tools/vocab.h"

namespace py = pybind11;
using namespace ssm_tools;

PYBIND11_MODULE(_tools, m) {
  m.doc() = "ssm-tools tools and batched dispatch loop (C++)";
  m.def("token_name", &token_name, "Readable name of a token id");
  m.def("vocab", []() {
    py::dict d;
    d["PAD"] = tok::PAD; d["BOS"] = tok::BOS; d["EOS"] = tok::EOS; d["ANS"] = tok::ANS;
    d["ERR"] = tok::ERR; d["BLANK"] = tok::BLANK; d["CALL"] = tok::CALL; d["CALL_END"] = tok::CALL_END;
    d["RESULT"] = tok::RESULT; d["RESULT_END"] = tok::RESULT_END;
    d["POINTER_BASE"] = tok::POINTER_BASE; d["MAX_POINTERS"] = tok::kMaxPointers;
    d["POINTER_OPS"] = tok::kPointerOps; d["NEWLINE"] = tok::NEWLINE; d["CHAR_BASE"] = tok::CHAR_BASE;
    d["CHAR_END"] = tok::CHAR_END; d["VOCAB_SIZE"] = tok::kVocabSize;
    return d;
  }, "Token ids of the control, command and character ranges (the one source of truth)");
}
