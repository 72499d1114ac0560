// The table of GGUF type traits.
#include "quant/quant.h"

#include <limits>
#include <string>

#include "common/error.h"

namespace edgellm::quant {

namespace {

struct Entry {
    uint32_t id;
    Traits traits;
};

constexpr int64_t QK_K = 256;

// Block sizes and byte sizes as in GGUF files; can_quantize is true once a quantizer exists.
constexpr Entry kTypes[] = {
    {0, {"f32", 1, 4, true}},
    {1, {"f16", 1, 2, true}},
    {2, {"q4_0", 32, 2 + 16, true}},
    {3, {"q4_1", 32, 2 + 2 + 16, true}},
    {6, {"q5_0", 32, 2 + 4 + 16, true}},
    {7, {"q5_1", 32, 2 + 2 + 4 + 16, true}},
    {8, {"q8_0", 32, 2 + 32, true}},
    {9, {"q8_1", 32, 2 + 2 + 32, false}},
    {10, {"q2_K", QK_K, QK_K / 16 + QK_K / 4 + 2 + 2, true}},
    {11, {"q3_K", QK_K, QK_K / 8 + QK_K / 4 + 12 + 2, true}},
    {12, {"q4_K", QK_K, 2 + 2 + 12 + QK_K / 2, true}},
    {13, {"q5_K", QK_K, 2 + 2 + 12 + QK_K / 8 + QK_K / 2, true}},
    {14, {"q6_K", QK_K, QK_K / 2 + QK_K / 4 + QK_K / 16 + 2, true}},
    {15, {"q8_K", QK_K, 4 + QK_K + QK_K / 16 * 2, false}},
    {24, {"i8", 1, 1, false}},
    {25, {"i16", 1, 2, false}},
    {26, {"i32", 1, 4, false}},
    {27, {"i64", 1, 8, false}},
    {28, {"f64", 1, 8, false}},
    {30, {"bf16", 1, 2, true}},
};

}  // namespace

const Traits* traits(uint32_t type) {
    for (const auto& e : kTypes)
        if (e.id == type) return &e.traits;
    return nullptr;
}

size_t row_size(Type type, int64_t n_per_row) {
    const Traits* t = traits(static_cast<uint32_t>(type));
    if (!t) throw Error("unknown tensor type id " + std::to_string(static_cast<uint32_t>(type)));
    if (n_per_row < 0 || n_per_row % t->block_size != 0)
        throw Error(std::string("row length ") + std::to_string(n_per_row) + " is not a multiple of the " +
                    t->name + " block size " + std::to_string(t->block_size));
    const uint64_t blocks = static_cast<uint64_t>(n_per_row / t->block_size);
    if (blocks > std::numeric_limits<size_t>::max() / t->type_size)
        throw Error(std::string("row length ") + std::to_string(n_per_row) + " of " + t->name + " overflows");
    return static_cast<size_t>(blocks) * t->type_size;
}

}  // namespace edgellm::quant
