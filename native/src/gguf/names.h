// Helpers for messages (internal to gguf/).
#pragma once

#include <cstdint>
#include <string>
#include <string_view>

namespace edgellm::gguf {

// 'name' in single quotes, non-printable bytes escaped as \xNN, cut after 80 bytes: names come
// from untrusted files and go into one-line error messages.
std::string quote(std::string_view s);

// Byte size of a tensor of `rows` rows of ne0 elements of type `type` (known to quant::traits),
// into *nbytes. Returns "" on success, else why not (ne0 not a multiple of the block, or an
// overflowing product); the reader and the writer prefix the file and the field.
std::string tensor_bytes(uint32_t type, int64_t ne0, uint64_t rows, uint64_t* nbytes);

}  // namespace edgellm::gguf
