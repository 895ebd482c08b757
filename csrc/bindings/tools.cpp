// Tool and the C++ tools. Python subclasses of Tool go through the trampoline below: the loop calls
// them like C++ tools (each call takes the GIL, so they are slower but behave the same).
#include <pybind11/pybind11.h>
#include <pybind11/stl.h>

#include "bindings/bindings.h"
#include "tools/calculator.h"
#include "tools/cell_memory.h"
#include "tools/search_memory.h"
#include "tools/tool_registry.h"

namespace py = pybind11;

namespace ssm_tools {
namespace {

class PyTool : public Tool {
 public:
  std::string name() const override { PYBIND11_OVERRIDE_PURE(std::string, Tool, name, ); }
  void reset(uint64_t seed) override { PYBIND11_OVERRIDE_PURE(void, Tool, reset, seed); }
  void observe(Token t) override { PYBIND11_OVERRIDE(void, Tool, observe, t); }
  bool accepts(const Tokens& command) const override { PYBIND11_OVERRIDE_PURE(bool, Tool, accepts, command); }
  // Not PYBIND11_OVERRIDE_PURE: a result that is not a list of ints gets an error naming the tool and
  // the expected type, not pybind11's bare "Unable to cast Python instance of type str".
  Tokens call(const Tokens& command) override {
    py::gil_scoped_acquire gil;
    py::function override = py::get_override(static_cast<const Tool*>(this), "call");
    if (!override) py::pybind11_fail("Tried to call pure virtual function \"Tool::call\"");
    py::object result = override(command);
    try {
      return result.cast<Tokens>();
    } catch (const py::cast_error&) {
      throw py::type_error("tool " + name() + ": call() must return a list of int token ids, got " +
                           py::str(py::type::of(result).attr("__name__")).cast<std::string>() + " " +
                           py::repr(result).cast<std::string>().substr(0, 80));
    }
  }
  std::string dump() const override { PYBIND11_OVERRIDE_PURE(std::string, Tool, dump, ); }
};

}  // namespace

void bind_tools(py::module_& m) {
  py::class_<Tool, PyTool, std::shared_ptr<Tool>>(m, "Tool", R"doc(
A tool of an episode (see csrc/tools/tool.h). Subclass it in Python and implement name(),
reset(seed), observe(token) (optional), accepts(command), call(command) -> list[int], dump().
A command is a list of token ids: one pointer-command token (a write: the command and its symbol),
or the tokens between [CALL] and [/CALL]. Answer malformed commands with [ERR]..., never raise.)doc")
      .def(py::init<>())
      .def("name", &Tool::name)
      .def("reset", &Tool::reset, py::arg("seed") = 0)
      .def("observe", &Tool::observe, py::arg("token"))
      .def("accepts", &Tool::accepts, py::arg("command"))
      .def("call", &Tool::call, py::arg("command"))
      .def("dump", &Tool::dump)
      .def("__repr__", [](const Tool& t) { return "<Tool " + t.name() + ">"; });

  py::class_<CellMemory, Tool, std::shared_ptr<CellMemory>>(m, "CellMemory")
      .def_property_readonly("num_pointers", &CellMemory::num_pointers)
      .def("position", &CellMemory::position, py::arg("pointer"), "Cell index of a pointer (0-based)")
      .def_property_readonly("cells", &CellMemory::cells);
  py::class_<PointerMemory, CellMemory, std::shared_ptr<PointerMemory>>(
      m, "PointerMemory", "The paper's pointer memory over the episode's own context (read, left, right)")
      .def(py::init<int, int64_t>(), py::arg("num_pointers") = PointerMemory::kDefaultPointers,
           py::arg("max_cells") = kDefaultMaxCells);
  py::class_<TapeMemory, CellMemory, std::shared_ptr<TapeMemory>>(
      m, "TapeMemory", "Theorem 2's tape: read, left, right, write <symbol>")
      .def(py::init<int, int64_t>(), py::arg("num_pointers") = TapeMemory::kDefaultPointers,
           py::arg("max_cells") = kDefaultMaxCells);
  py::class_<SearchMemory, Tool, std::shared_ptr<SearchMemory>>(
      m, "SearchMemory", "Line-structured memory over the context: [CALL]find <x>[/CALL]")
      .def(py::init<int64_t, int64_t>(), py::arg("max_lines") = SearchMemory::kDefaultMaxLines,
           py::arg("max_response_tokens") = SearchMemory::kDefaultMaxResponseTokens)
      .def_property_readonly("lines", &SearchMemory::lines);
  py::class_<Calculator, Tool, std::shared_ptr<Calculator>>(
      m, "Calculator", "Single-turn calculator: [CALL]add <a> <b>[/CALL], arbitrary-length decimals")
      .def(py::init<int64_t>(), py::arg("max_digits") = Calculator::kDefaultMaxDigits);

  m.def("registered_tools", &registered_tools, "Names ToolSpec accepts");
}

}  // namespace ssm_tools
