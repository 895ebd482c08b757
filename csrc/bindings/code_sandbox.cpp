// Python face of CodeSandbox (the coding task's tool), and its ToolSpec entry "code_sandbox". The
// Tool methods (reset, observe, accepts, call, dump) come from the Tool base class (tools.cpp).
#include <pybind11/pybind11.h>
#include <pybind11/stl.h>

#include "bindings/bindings.h"
#include "tools/code_sandbox.h"
#include "tools/tool_registry.h"

namespace py = pybind11;

namespace ssm_tools {
namespace {

// The options as ToolSpec and the Python constructor both name them (defaults from the struct).
CodeSandboxOptions read_options(ToolOptions& o) {
  const CodeSandboxOptions d;
  CodeSandboxOptions opts;
  opts.cpu_seconds = o.get_int("cpu_seconds", d.cpu_seconds);
  opts.memory_bytes = o.get_int("memory_bytes", d.memory_bytes);
  opts.wall_ms = o.get_int("wall_ms", d.wall_ms);
  opts.max_response_chars = o.get_int("max_response_chars", d.max_response_chars);
  opts.max_file_chars = o.get_int("max_file_chars", d.max_file_chars);
  opts.max_files = o.get_int("max_files", d.max_files);
  opts.python = o.get_string("python", d.python);
  opts.tmp_dir = o.get_string("tmp_dir", d.tmp_dir);
  opts.isolation = o.get_string("isolation", d.isolation);
  opts.max_processes = o.get_int("max_processes", d.max_processes);
  // A spec-built sandbox has no other way to get a codebase than its prompt.
  opts.codebase_from_prompt = o.get_int("codebase_from_prompt", 1) != 0;
  return opts;
}

}  // namespace

void bind_code_sandbox(py::module_& m) {
  register_tool("code_sandbox", [](ToolOptions& o) -> ToolFactory {
    const CodeSandboxOptions opts = read_options(o);
    CodeSandbox probe(opts);  // bad options fail here, at Env construction, not inside the loop
    return [opts] { return std::make_shared<CodeSandbox>(opts); };
  });

  const CodeSandboxOptions d;
  py::class_<CodeSandbox, Tool, std::shared_ptr<CodeSandbox>>(m, "CodeSandbox", R"doc(
The coding task's tool: a Python codebase held in memory, answering `ls`, `cat <file>`,
`edit <file>\n<content>` and `run` (main.py in a jail of Linux namespaces: a read-only system, a
run directory as the only writable place, no network, no view of other processes, bounded processes,
CPU time, memory and file size, an environment of PATH only; see docs/sandbox.md).
isolation="none" runs main.py without the jail, with your rights (limits and timeout only).
The codebase is load(files), brought back by every reset(); or, with codebase_from_prompt, the one
register_codebase() filed under the first line of the episode's prompt.)doc")
      .def(py::init([](int64_t cpu_seconds, int64_t memory_bytes, int64_t wall_ms, int64_t max_response_chars,
                       int64_t max_file_chars, int64_t max_files, std::string python, std::string tmp_dir,
                       bool codebase_from_prompt, std::string isolation, int64_t max_processes) {
             return std::make_shared<CodeSandbox>(CodeSandboxOptions{
                 cpu_seconds, memory_bytes, wall_ms, max_response_chars, max_file_chars, max_files,
                 std::move(python), std::move(tmp_dir), codebase_from_prompt, std::move(isolation), max_processes});
           }),
           py::arg("cpu_seconds") = d.cpu_seconds, py::arg("memory_bytes") = d.memory_bytes,
           py::arg("wall_ms") = d.wall_ms, py::arg("max_response_chars") = d.max_response_chars,
           py::arg("max_file_chars") = d.max_file_chars, py::arg("max_files") = d.max_files,
           py::arg("python") = d.python, py::arg("tmp_dir") = d.tmp_dir,
           py::arg("codebase_from_prompt") = d.codebase_from_prompt, py::arg("isolation") = d.isolation,
           py::arg("max_processes") = d.max_processes)
      .def("load", &CodeSandbox::load, py::arg("files"),
           "Set the codebase (file name -> content) that every episode starts from")
      .def("files", &CodeSandbox::files, "The current codebase (file name -> content)")
      .def(
          "call",
          [](CodeSandbox& self, const Tokens& command) {
            py::gil_scoped_release release;  // `run` takes up to wall_ms: let other threads go on
            return self.call(command);
          },
          py::arg("command"), "Answer a command (the tokens between [CALL] and [/CALL])")
      .def(
          "run_program",
          [](const CodeSandbox& self) {
            RunOutcome outcome;
            {
              py::gil_scoped_release release;  // as in call()
              outcome = self.run_program();
            }
            return py::make_tuple(outcome.status, outcome.output);
          },
          "Run main.py of the current files: (status, output), e.g. ('exit 0', '42\\n')");

  m.def("register_codebase", &register_codebase, py::arg("key"), py::arg("files"),
        "File a codebase under `key` (a prompt's first line) for sandboxes with codebase_from_prompt");
}

}  // namespace ssm_tools
