// Value type names and sizes; quoting of untrusted names for messages.
#include "gguf/names.h"

#include "quant/quant.h"

#include "gguf/gguf.h"

namespace edgellm::gguf {

namespace {
struct ValueTypeEntry {
    const char* name;
    size_t size;  // bytes of one scalar; 0 when variable
};
constexpr ValueTypeEntry kValueTypes[] = {
    {"uint8", 1}, {"int8", 1},    {"uint16", 2}, {"int16", 2},  {"uint32", 4}, {"int32", 4},  {"float32", 4},
    {"bool", 1},  {"string", 0},  {"array", 0},  {"uint64", 8}, {"int64", 8},  {"float64", 8},
};
constexpr uint32_t kNumValueTypes = sizeof(kValueTypes) / sizeof(kValueTypes[0]);
}  // namespace

const char* value_type_name(uint32_t type) { return type < kNumValueTypes ? kValueTypes[type].name : "unknown"; }

size_t value_type_size(uint32_t type) { return type < kNumValueTypes ? kValueTypes[type].size : 0; }

std::string quote(std::string_view s) {
    constexpr size_t kMax = 80;
    static const char* hex = "0123456789abcdef";
    std::string out = "'";
    for (size_t i = 0; i < s.size() && i < kMax; ++i) {
        unsigned char ch = static_cast<unsigned char>(s[i]);
        if (ch < 0x20 || ch == 0x7f || ch == '\\' || ch == '\'') {
            out += "\\x";
            out += hex[ch >> 4];
            out += hex[ch & 15];
        } else {
            out += static_cast<char>(ch);
        }
    }
    if (s.size() > kMax) out += "...";
    out += "'";
    return out;
}

std::string tensor_bytes(uint32_t type, int64_t ne0, uint64_t rows, uint64_t* nbytes) {
    const quant::Traits* tr = quant::traits(type);
    if (ne0 % tr->block_size != 0)
        return "ne[0] = " + std::to_string(ne0) + " is not a multiple of the " + tr->name + " block size " +
               std::to_string(tr->block_size);
    uint64_t row;
    if (__builtin_mul_overflow(static_cast<uint64_t>(ne0 / tr->block_size), tr->type_size, &row) ||
        __builtin_mul_overflow(row, rows, nbytes))
        return "byte size overflows";
    return "";
}

}  // namespace edgellm::gguf
