// GGUF reader: validates the whole header against the file size, then serves views into the map.
#include <algorithm>
#include <cstring>
#include <limits>

#include "gguf/gguf.h"
#include "gguf/names.h"

namespace edgellm::gguf {

namespace {

// Smallest encodings, used to refuse counts that the rest of the file could not hold before
// reserving memory for them.
constexpr uint64_t kMinKVBytes = 8 + 4 + 1;            // empty key, type, one-byte value
constexpr uint64_t kMinTensorInfoBytes = 8 + 4 + 4 + 8;  // empty name, n_dims = 0, type, offset
// Reservations are capped: a crafted count costs memory only as entries are actually parsed.
constexpr uint64_t kMaxReserve = 1 << 16;

uint32_t bswap32(uint32_t v) {
    return (v >> 24) | ((v >> 8) & 0xff00u) | ((v << 8) & 0xff0000u) | (v << 24);
}

// A bounded read position over the map. Every read checks the remaining bytes first.
struct Cursor {
    const uint8_t* base;
    uint64_t size;
    uint64_t pos = 0;

    uint64_t remaining() const { return size - pos; }
};

}  // namespace

void Reader::fail(const std::string& field, const std::string& what) const {
    throw Error(path_ + ": " + field + ": " + what);
}

Reader::Reader(const std::string& path) : path_(path), file_(path) {
    parse();
}

void Reader::parse() {
    Cursor c{file_.data(), file_.size()};
    std::string field;  // what is being read, for messages

    auto need = [&](uint64_t n) {
        if (n > c.remaining())
            fail(field, "file is truncated: needs " + std::to_string(n) + " bytes at offset " +
                            std::to_string(c.pos) + ", file size " + std::to_string(c.size));
    };
    auto read_u32 = [&]() {
        need(4);
        uint32_t v;
        std::memcpy(&v, c.base + c.pos, 4);
        c.pos += 4;
        return v;
    };
    auto read_u64 = [&]() {
        need(8);
        uint64_t v;
        std::memcpy(&v, c.base + c.pos, 8);
        c.pos += 8;
        return v;
    };
    auto read_string = [&]() {
        uint64_t n = read_u64();
        if (n > c.remaining())
            fail(field, "string length " + std::to_string(n) + " at offset " + std::to_string(c.pos - 8) +
                            " runs past the end of the file (size " + std::to_string(c.size) + ")");
        std::string_view s(reinterpret_cast<const char*>(c.base + c.pos), n);
        c.pos += n;
        return s;
    };

    // Header.
    field = "magic";
    uint32_t magic = read_u32();
    if (magic != kMagic) fail(field, "not a GGUF file (first bytes are not \"GGUF\")");
    field = "version";
    version_ = read_u32();
    if (version_ != 2 && version_ != 3) {
        uint32_t swapped = bswap32(version_);
        if (swapped == 2 || swapped == 3) fail(field, "big-endian GGUF files are not supported");
        fail(field, "unsupported GGUF version " + std::to_string(version_) + " (supported: 2, 3)");
    }
    field = "n_tensors";
    uint64_t n_tensors = read_u64();
    field = "n_kv";
    uint64_t n_kv = read_u64();
    if (n_kv > c.remaining() / kMinKVBytes)
        fail("n_kv", "count " + std::to_string(n_kv) + " is more than the file could hold (size " +
                         std::to_string(c.size) + ")");
    if (n_tensors > c.remaining() / kMinTensorInfoBytes)
        fail("n_tensors", "count " + std::to_string(n_tensors) + " is more than the file could hold (size " +
                              std::to_string(c.size) + ")");

    // Metadata.
    kvs_.reserve(std::min(n_kv, kMaxReserve));
    kv_index_.reserve(std::min(n_kv, kMaxReserve));
    for (uint64_t i = 0; i < n_kv; ++i) {
        field = "kv #" + std::to_string(i) + " key";
        KV kv{};
        kv.key = read_string();
        field = "key " + quote(kv.key);
        auto [it, inserted] = kv_index_.emplace(kv.key, kvs_.size());
        if (!inserted) fail(field, "duplicate key (also kv #" + std::to_string(it->second) + ")");

        uint32_t type = read_u32();
        if (type > static_cast<uint32_t>(ValueType::FLOAT64))
            fail(field, "unknown value type " + std::to_string(type));
        kv.type = static_cast<ValueType>(type);
        kv.elem_type = kv.type;
        if (kv.type == ValueType::STRING) {
            std::string_view s = read_string();
            kv.data = reinterpret_cast<const uint8_t*>(s.data());
            kv.nbytes = s.size();
        } else if (kv.type == ValueType::ARRAY) {
            uint32_t elem = read_u32();
            if (elem > static_cast<uint32_t>(ValueType::FLOAT64))
                fail(field, "unknown array element type " + std::to_string(elem));
            if (elem == static_cast<uint32_t>(ValueType::ARRAY)) fail(field, "nested arrays are not supported");
            kv.elem_type = static_cast<ValueType>(elem);
            kv.count = read_u64();
            if (kv.elem_type == ValueType::STRING) {
                if (kv.count > c.remaining() / 8)
                    fail(field, "array length " + std::to_string(kv.count) +
                                    " is more than the rest of the file could hold (size " +
                                    std::to_string(c.size) + ")");
                kv.data = c.base + c.pos;
                kv.strings.reserve(std::min(kv.count, 16 * kMaxReserve));
                std::string base_field = field;
                for (uint64_t j = 0; j < kv.count; ++j) {
                    field = base_field + "[" + std::to_string(j) + "]";
                    kv.strings.push_back(read_string());
                }
                field = base_field;
                kv.nbytes = c.pos - static_cast<uint64_t>(kv.data - c.base);
            } else {
                size_t esize = value_type_size(elem);
                if (kv.count > c.remaining() / esize)
                    fail(field, "array of " + std::to_string(kv.count) + " " + value_type_name(elem) +
                                    " at offset " + std::to_string(c.pos) + " runs past the end of the file (size " +
                                    std::to_string(c.size) + ")");
                kv.data = c.base + c.pos;
                kv.nbytes = kv.count * esize;
                c.pos += kv.nbytes;
            }
        } else {
            size_t size = value_type_size(type);
            need(size);
            kv.data = c.base + c.pos;
            kv.nbytes = size;
            c.pos += size;
            if (kv.type == ValueType::BOOL && *kv.data > 1)
                fail(field, "bool value is " + std::to_string(*kv.data) + ", expected 0 or 1");
        }
        kvs_.push_back(std::move(kv));
    }

    // Alignment of the data section and of every tensor offset.
    if (const KV* kv = find("general.alignment")) {
        if (kv->type != ValueType::UINT32)
            fail("key 'general.alignment'",
                 std::string("type is ") + value_type_name(static_cast<uint32_t>(kv->type)) + ", expected uint32");
        uint32_t a;
        std::memcpy(&a, kv->data, 4);
        if (a == 0 || (a & (a - 1)) != 0)
            fail("key 'general.alignment'", "value " + std::to_string(a) + " is not a power of two");
        alignment_ = a;
    }

    // Tensor infos.
    tensors_.reserve(std::min(n_tensors, kMaxReserve));
    tensor_index_.reserve(std::min(n_tensors, kMaxReserve));
    for (uint64_t i = 0; i < n_tensors; ++i) {
        field = "tensor #" + std::to_string(i) + " name";
        TensorInfo t{};
        t.name = read_string();
        field = "tensor " + quote(t.name);
        auto [it, inserted] = tensor_index_.emplace(t.name, tensors_.size());
        if (!inserted) fail(field, "duplicate tensor name (also tensor #" + std::to_string(it->second) + ")");

        t.n_dims = read_u32();
        if (t.n_dims > kMaxDims)
            fail(field, "n_dims is " + std::to_string(t.n_dims) + ", at most " + std::to_string(kMaxDims));
        int64_t n_elements = 1;
        for (uint32_t d = 0; d < kMaxDims; ++d) {
            if (d >= t.n_dims) {
                t.ne[d] = 1;
                continue;
            }
            uint64_t v = read_u64();
            if (v == 0 || v > static_cast<uint64_t>(std::numeric_limits<int64_t>::max()))
                fail(field, "ne[" + std::to_string(d) + "] is " + std::to_string(v) + ", must be in [1, 2^63)");
            t.ne[d] = static_cast<int64_t>(v);
            if (__builtin_mul_overflow(n_elements, t.ne[d], &n_elements))
                fail(field, "element count overflows (ne[" + std::to_string(d) + "] = " + std::to_string(v) + ")");
        }

        uint32_t type = read_u32();
        const quant::Traits* tr = quant::traits(type);
        if (!tr) fail(field, "unknown or unsupported tensor type id " + std::to_string(type));
        t.type = static_cast<quant::Type>(type);
        const std::string why = tensor_bytes(type, t.ne[0], static_cast<uint64_t>(n_elements / t.ne[0]), &t.nbytes);
        if (!why.empty()) fail(field, why);

        t.offset = read_u64();
        if (t.offset % alignment_ != 0)
            fail(field, "offset " + std::to_string(t.offset) + " is not a multiple of the alignment " +
                            std::to_string(alignment_));
        tensors_.push_back(t);
    }

    // Data section: starts at the next aligned offset; every tensor inside the file, none overlapping.
    uint64_t pad = (alignment_ - c.pos % alignment_) % alignment_;
    data_offset_ = c.pos + pad;
    for (const TensorInfo& t : tensors_) {
        uint64_t begin, end;
        bool overflow = __builtin_add_overflow(data_offset_, t.offset, &begin) ||
                        __builtin_add_overflow(begin, t.nbytes, &end);
        if (overflow || end > c.size) {
            std::string range = overflow ? "[data + " + std::to_string(t.offset) + ", ...)"
                                         : "[" + std::to_string(begin) + ", " + std::to_string(end) + ")";
            fail("tensor " + quote(t.name),
                 "data " + range + " lies outside the file (size " + std::to_string(c.size) + ")");
        }
    }
    std::vector<const TensorInfo*> by_offset;
    by_offset.reserve(tensors_.size());
    for (const TensorInfo& t : tensors_) by_offset.push_back(&t);
    std::sort(by_offset.begin(), by_offset.end(),
              [](const TensorInfo* a, const TensorInfo* b) { return a->offset < b->offset; });
    for (size_t i = 1; i < by_offset.size(); ++i) {
        const TensorInfo* a = by_offset[i - 1];
        const TensorInfo* b = by_offset[i];
        if (a->offset + a->nbytes > b->offset)
            fail("tensor " + quote(b->name),
                 "data at offset " + std::to_string(b->offset) + " overlaps tensor " + quote(a->name) + " [" +
                     std::to_string(a->offset) + ", " + std::to_string(a->offset + a->nbytes) + ")");
    }
}

const KV* Reader::find(std::string_view key) const {
    auto it = kv_index_.find(key);
    return it == kv_index_.end() ? nullptr : &kvs_[it->second];
}

const KV& Reader::get(std::string_view key, ValueType type) const {
    const KV* kv = find(key);
    if (!kv) fail("key " + quote(key), "missing");
    if (kv->type != type)
        fail("key " + quote(key), std::string("type is ") + value_type_name(static_cast<uint32_t>(kv->type)) +
                                      ", expected " + value_type_name(static_cast<uint32_t>(type)));
    return *kv;
}

namespace {
template <typename T>
T load(const uint8_t* p) {
    T v;
    std::memcpy(&v, p, sizeof(T));
    return v;
}
}  // namespace

uint32_t Reader::get_u32(std::string_view key) const { return load<uint32_t>(get(key, ValueType::UINT32).data); }
int32_t Reader::get_i32(std::string_view key) const { return load<int32_t>(get(key, ValueType::INT32).data); }
uint64_t Reader::get_u64(std::string_view key) const { return load<uint64_t>(get(key, ValueType::UINT64).data); }
float Reader::get_f32(std::string_view key) const { return load<float>(get(key, ValueType::FLOAT32).data); }
bool Reader::get_bool(std::string_view key) const { return *get(key, ValueType::BOOL).data != 0; }

std::string_view Reader::get_string(std::string_view key) const {
    const KV& kv = get(key, ValueType::STRING);
    return {reinterpret_cast<const char*>(kv.data), kv.nbytes};
}

const KV& Reader::get_array(std::string_view key, ValueType elem_type) const {
    const KV& kv = get(key, ValueType::ARRAY);
    if (kv.elem_type != elem_type)
        fail("key " + quote(key), std::string("array of ") + value_type_name(static_cast<uint32_t>(kv.elem_type)) +
                                      ", expected array of " + value_type_name(static_cast<uint32_t>(elem_type)));
    return kv;
}

std::vector<int32_t> Reader::get_i32_array(std::string_view key) const {
    const KV& kv = get_array(key, ValueType::INT32);
    std::vector<int32_t> out(kv.count);
    if (kv.count) std::memcpy(out.data(), kv.data, kv.nbytes);
    return out;
}

std::vector<float> Reader::get_f32_array(std::string_view key) const {
    const KV& kv = get_array(key, ValueType::FLOAT32);
    std::vector<float> out(kv.count);
    if (kv.count) std::memcpy(out.data(), kv.data, kv.nbytes);
    return out;
}

const std::vector<std::string_view>& Reader::get_string_array(std::string_view key) const {
    return get_array(key, ValueType::STRING).strings;
}

const TensorInfo* Reader::find_tensor(std::string_view name) const {
    auto it = tensor_index_.find(name);
    return it == tensor_index_.end() ? nullptr : &tensors_[it->second];
}

const TensorInfo& Reader::tensor(std::string_view name) const {
    const TensorInfo* t = find_tensor(name);
    if (!t) fail("tensor " + quote(name), "missing");
    return *t;
}

}  // namespace edgellm::gguf
