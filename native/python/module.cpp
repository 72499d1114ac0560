// The pybind11 module edgellm._core: converts types and errors, nothing more.
#include "bindings.h"

#include "common/error.h"

namespace py = pybind11;

namespace edgellm_py {

py::object& edgellm_error() {
    static py::object exc;
    return exc;
}

}  // namespace edgellm_py

PYBIND11_MODULE(_core, m) {
    m.doc() = "edgellm native core";
    auto& base = edgellm_py::edgellm_error();
    // register_exception also installs the translator; subclasses registered later (GGUFError)
    // are tried first, so they win for their own C++ types.
    base = py::reinterpret_borrow<py::object>(
        py::register_exception<edgellm::Error>(m, "EdgeLLMError", PyExc_RuntimeError).ptr());
    edgellm_py::bind_quant(m);
    edgellm_py::bind_gguf(m);
    edgellm_py::bind_llm(m);
    edgellm_py::bind_bench(m);
}
