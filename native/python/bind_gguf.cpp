#include "bindings.h"
namespace edgellm_py { void bind_gguf(pybind11::module_&) {} }
