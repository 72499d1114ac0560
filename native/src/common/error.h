// Errors inside the core. C++ exceptions never cross the C API; inside the core (and in the
// pybind11 module) they carry one precise message naming the file and the field.
#pragma once

#include <stdexcept>
#include <string>

namespace edgellm {

// Base of every error the core raises on bad input. Bound to Python as edgellm.EdgeLLMError.
struct Error : std::runtime_error {
    using std::runtime_error::runtime_error;
};

}  // namespace edgellm
