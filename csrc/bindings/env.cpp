// Env: the batched dispatch loop. Inputs are converted once at the boundary, then the GIL is released
// while C++ works; it is taken back only to call the Python model_step and Python tools. Results are
// numpy arrays (no per-token Python objects).
#include <pybind11/functional.h>
#include <pybind11/numpy.h>
#include <pybind11/pybind11.h>
#include <pybind11/stl.h>

#include <algorithm>
#include <cstring>

#include "bindings/bindings.h"
#include "tools/tool_registry.h"

namespace py = pybind11;

namespace ssm_tools {
namespace {

// A Python tool instance shared with C++: the Python object is kept alive as long as the C++ side
// holds it (its overrides live in the Python object), and released under the GIL.
std::shared_ptr<Tool> hold_python_tool(py::object obj, size_t slot) {
  Tool* raw;
  try {
    raw = obj.cast<Tool*>();
  } catch (const py::cast_error&) {
    throw py::type_error("tools[" + std::to_string(slot) + "]: the factory must return a ssm_tools.tools.Tool, got " +
                         std::string(py::str(py::type::of(obj))));
  }
  auto* handle = new py::object(std::move(obj));
  return std::shared_ptr<Tool>(raw, [handle](Tool*) {
    py::gil_scoped_acquire gil;
    delete handle;
  });
}

ToolOption to_option(const std::string& tool, const std::string& key, const py::handle& value) {
  if (py::isinstance<py::bool_>(value) || py::isinstance<py::int_>(value)) return value.cast<int64_t>();
  if (py::isinstance<py::str>(value)) return value.cast<std::string>();
  throw py::type_error(tool + ": option " + key + " must be an int or str, got " +
                       std::string(py::str(py::type::of(value))));
}

// A (B,) integer array from any array-like (numpy, list); rejects floats and wrong shapes.
Tokens to_tokens_1d(const py::handle& obj, size_t expected, const std::string& what) {
  py::array arr = py::array::ensure(obj);
  if (!arr) throw py::type_error(what + ": expected an integer array of shape (" + std::to_string(expected) + ",)");
  const char kind = arr.dtype().kind();
  if (kind != 'i' && kind != 'u')
    throw py::type_error(what + ": expected integer tokens, got dtype " + std::string(py::str(arr.dtype())));
  if (arr.ndim() != 1 || static_cast<size_t>(arr.shape(0)) != expected)
    throw py::value_error(what + ": expected shape (" + std::to_string(expected) + ",), got " +
                          std::string(py::str(py::getattr(arr, "shape"))));
  auto wide = py::array_t<int64_t, py::array::c_style | py::array::forcecast>::ensure(arr);
  Tokens out(expected);
  const int64_t* data = wide.data();
  for (size_t i = 0; i < expected; ++i) {
    // Checked here, on the 64-bit value: narrowing first could wrap a bad id into a valid one.
    if (data[i] < 0 || data[i] >= tok::kVocabSize)
      throw py::value_error(what + "[" + std::to_string(i) + "] = " + std::to_string(data[i]) +
                            " is not a token id in [0, " + std::to_string(tok::kVocabSize) + ")");
    out[i] = static_cast<Token>(data[i]);
  }
  return out;
}

// Token sequences, one per episode: each a bytes object (one token per byte: the tasks' packed
// oracle scripts, widened here without a Python int per token) or a sequence of int token ids.
// Values are range-checked by the Env.
std::vector<Tokens> to_token_lists(const py::handle& obj, const std::string& what) {
  if (!py::isinstance<py::list>(obj) && !py::isinstance<py::tuple>(obj))
    throw py::type_error(what + ": expected a list of token sequences, got " + std::string(py::str(py::type::of(obj))));
  const py::sequence seqs = py::reinterpret_borrow<py::sequence>(obj);
  std::vector<Tokens> out(seqs.size());
  for (size_t i = 0; i < out.size(); ++i) {
    const py::object item = seqs[i];
    if (PyBytes_Check(item.ptr())) {
      const auto* data = reinterpret_cast<const unsigned char*>(PyBytes_AS_STRING(item.ptr()));
      out[i].assign(data, data + PyBytes_GET_SIZE(item.ptr()));
      continue;
    }
    try {
      out[i] = item.cast<Tokens>();
    } catch (const py::cast_error&) {
      throw py::type_error(what + "[" + std::to_string(i) + "]: expected int token ids (a non-integer element "
                           "was found) or bytes");
    }
  }
  return out;
}

template <typename T>
py::array_t<T> to_numpy(const std::vector<T>& v) {
  py::array_t<T> out(v.size());
  if (!v.empty()) std::memcpy(out.mutable_data(), v.data(), v.size() * sizeof(T));
  return out;
}

py::array_t<bool> to_numpy_bool(const std::vector<uint8_t>& v) {
  py::array_t<bool> out(v.size());
  bool* data = out.mutable_data();
  for (size_t i = 0; i < v.size(); ++i) data[i] = v[i] != 0;
  return out;
}

class PyEnv {
 public:
  PyEnv(const py::list& tools, int batch_size, int64_t max_len, int num_threads, int64_t max_call_tokens,
        int64_t max_answer_tokens) {
    EnvOptions options;
    options.batch_size = batch_size;
    options.max_len = max_len;
    options.protocol.max_call_tokens = max_call_tokens;
    options.protocol.max_answer_tokens = max_answer_tokens;
    options.num_threads = num_threads;
    std::vector<ToolFactory> factories;
    auto python_subclass = std::make_shared<bool>(false);
    for (size_t j = 0; j < tools.size(); ++j) factories.push_back(factory(tools[j], j, python_subclass));
    env_ = std::make_unique<Env>(factories, options);
    // Python-subclassed tools serialise on the GIL anyway: one thread avoids pointless contention.
    if (*python_subclass) env_->set_num_threads(1);
  }

  py::array_t<int32_t> reset(const py::object& prompt_lists, uint64_t seed) {
    const std::vector<Tokens> prompts = to_token_lists(prompt_lists, "prompts");
    Tokens first;
    {
      py::gil_scoped_release release;
      first = env_->reset(prompts, seed);
    }
    return to_numpy(first);
  }

  py::tuple step(const py::object& sampled) {
    Tokens tokens = to_tokens_1d(sampled, env_->batch_size(), "sampled"), next;
    std::vector<uint8_t> forced, done;
    {
      py::gil_scoped_release release;
      env_->step(tokens, &next, &forced, &done);
    }
    return py::make_tuple(to_numpy(next), to_numpy_bool(forced), to_numpy_bool(done));
  }

  void replay(const py::object& prompt_lists, const py::object& script_lists, uint64_t seed) {
    const std::vector<Tokens> prompts = to_token_lists(prompt_lists, "prompts");
    const std::vector<Tokens> scripts = to_token_lists(script_lists, "model_tokens");
    py::gil_scoped_release release;
    env_->replay(prompts, scripts, seed);
  }

  void rollout(const py::function& model_step, const py::object& prompt_lists, int64_t max_steps, uint64_t seed) {
    const std::vector<Tokens> prompts = to_token_lists(prompt_lists, "prompts");
    const size_t batch = env_->batch_size();
    ModelStep step = [&](const Tokens& input, Tokens* sampled) {
      py::gil_scoped_acquire gil;
      py::object out = model_step(to_numpy(input));
      *sampled = to_tokens_1d(out, batch, "model_step output");
    };
    py::gil_scoped_release release;
    env_->rollout(prompts, max_steps, seed, step);
  }

  // (tokens (B, T) int64 padded with PAD, loss_mask (B, T) bool, lengths (B,) int64, done (B,) bool):
  // int64 as torch's embeddings take them, filled row by row with the GIL released.
  py::tuple transcript() const {
    const size_t batch = env_->batch_size();
    size_t width = 0;
    for (size_t i = 0; i < batch; ++i) width = std::max(width, env_->episode(i).tokens().size());
    py::array_t<int64_t> tokens({batch, width});
    py::array_t<bool> mask({batch, width});
    py::array_t<int64_t> lengths(batch);
    py::array_t<bool> done(batch);
    int64_t* t = tokens.mutable_data();
    bool* m = mask.mutable_data();
    int64_t* n = lengths.mutable_data();
    bool* d = done.mutable_data();
    {
      py::gil_scoped_release release;
      for (size_t i = 0; i < batch; ++i, t += width, m += width) {
        const Episode& e = env_->episode(i);
        const size_t len = e.tokens().size();
        std::copy(e.tokens().begin(), e.tokens().end(), t);
        std::fill(t + len, t + width, static_cast<int64_t>(tok::PAD));
        std::transform(e.generated().begin(), e.generated().end(), m, [](uint8_t g) { return g != 0; });
        std::fill(m + len, m + width, false);
        n[i] = static_cast<int64_t>(len);
        d[i] = e.done();
      }
    }
    return py::make_tuple(tokens, mask, lengths, done);
  }

  std::vector<std::string> dump(int i) const {
    if (i < 0 || i >= env_->batch_size())
      throw py::index_error("episode " + std::to_string(i) + " out of range [0, " +
                            std::to_string(env_->batch_size()) + ")");
    std::vector<std::string> out;
    for (const auto& tool : env_->episode(i).parser().tools()) out.push_back(tool->dump());
    return out;
  }

  int batch_size() const { return env_->batch_size(); }
  int num_threads() const { return env_->num_threads(); }

 private:
  static ToolFactory factory(const py::handle& item, size_t slot, std::shared_ptr<bool> python_subclass) {
    if (py::isinstance<py::tuple>(item) && py::len(item) == 2 && py::isinstance<py::str>(item[py::int_(0)])) {
      const std::string name = item[py::int_(0)].cast<std::string>();
      std::map<std::string, ToolOption> options;
      for (const auto& kv : item[py::int_(1)].cast<py::dict>())
        options[kv.first.cast<std::string>()] = to_option(name, kv.first.cast<std::string>(), kv.second);
      return make_tool_factory(name, options);
    }
    if (!PyCallable_Check(item.ptr()))
      throw py::type_error("tools[" + std::to_string(slot) +
                           "]: expected a (name, options) spec or a callable returning a Tool");
    py::object make = py::reinterpret_borrow<py::object>(item);
    return [make, slot, python_subclass] {
      py::gil_scoped_acquire gil;
      py::object tool = make();
      // A bound C++ class (e.g. a CodeSandbox a callable configured) runs without the GIL; only a
      // Python subclass has overrides that need it.
      const py::detail::type_info* info = py::detail::get_type_info(Py_TYPE(tool.ptr()));
      if (info == nullptr || info->type != Py_TYPE(tool.ptr())) *python_subclass = true;
      return hold_python_tool(tool, slot);
    };
  }

  std::unique_ptr<Env> env_;
};

}  // namespace

void bind_env(py::module_& m) {
  py::class_<PyEnv>(m, "Env", "Batched episodes over C++ or Python tools (wrapped by ssm_tools.env.Env)")
      .def(py::init<const py::list&, int, int64_t, int, int64_t, int64_t>(), py::arg("tools"),
           py::arg("batch_size"), py::arg("max_len") = int64_t{1} << 16, py::arg("num_threads") = 0,
           py::arg("max_call_tokens") = ProtocolLimits{}.max_call_tokens,
           py::arg("max_answer_tokens") = ProtocolLimits{}.max_answer_tokens)
      .def("reset", &PyEnv::reset, py::arg("prompts"), py::arg("seed") = 0)
      .def("step", &PyEnv::step, py::arg("sampled"))
      .def("replay", &PyEnv::replay, py::arg("prompts"), py::arg("model_tokens"), py::arg("seed") = 0)
      .def("rollout", &PyEnv::rollout, py::arg("model_step"), py::arg("prompts"), py::arg("max_steps"),
           py::arg("seed") = 0)
      .def("transcript", &PyEnv::transcript)
      .def("dump", &PyEnv::dump, py::arg("episode"), "dump() of each tool of one episode")
      .def_property_readonly("batch_size", &PyEnv::batch_size)
      .def_property_readonly("num_threads", &PyEnv::num_threads);
}

}  // namespace ssm_tools
