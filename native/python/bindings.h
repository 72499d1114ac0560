// Shared declarations of the pybind11 module's parts. Only native/python/ includes pybind11.
#pragma once

#include <pybind11/pybind11.h>

namespace edgellm_py {

// Python exception types registered by module.cpp (EdgeLLMError is the base of all).
pybind11::object& edgellm_error();

void bind_quant(pybind11::module_& m);
void bind_gguf(pybind11::module_& m);
void bind_llm(pybind11::module_& m);  // after bind_gguf: uses GGUFError
void bind_bench(pybind11::module_& m);  // bench/run.py's memory bandwidth probe

}  // namespace edgellm_py
