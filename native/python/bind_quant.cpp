#include "bindings.h"
namespace edgellm_py { void bind_quant(pybind11::module_&) {} }
