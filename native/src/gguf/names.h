// Helpers for messages (internal to gguf/).
#pragma once

#include <string>
#include <string_view>

namespace edgellm::gguf {

// 'name' in single quotes, non-printable bytes escaped as \xNN, cut after 80 bytes: names come
// from untrusted files and go into one-line error messages.
std::string quote(std::string_view s);

}  // namespace edgellm::gguf
