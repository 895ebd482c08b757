#include <pybind11/pybind11.h>

#include "bindings/bindings.h"
#include "tools/protocol.h"
#include "tools/vocab.h"

namespace py = pybind11;

namespace ssm_tools {

void bind_vocab(py::module_& m) {
  m.def("token_name", &token_name, py::arg("token"), "Readable name of a token id");
  m.def("mix_seed", &mix_seed, py::arg("seed"), py::arg("index"),
        "The seed of item `index` (episode, tool) derived from `seed`, as the dispatch loop derives it");
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

}  // namespace ssm_tools
