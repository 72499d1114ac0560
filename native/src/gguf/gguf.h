// GGUF files: a reader over a read-only memory map (zero copy, every count, size and offset checked
// against the file size before use) and a streaming writer that never leaves a partial file.
//
// Layout (little-endian; version 3, version 2 read too):
//   u32 magic "GGUF" | u32 version | u64 n_tensors | u64 n_kv
//   n_kv x        { string key | u32 value_type | value }
//   n_tensors x   { string name | u32 n_dims | u64 ne[n_dims] | u32 type | u64 offset }
//   padding to `general.alignment` (default 32) | tensor data (each tensor at an aligned offset
//   relative to the start of the data section)
// string = u64 length + bytes (no terminator); array = u32 element type + u64 count + elements.
// ne is in GGUF order: ne[0] is the innermost (contiguous) dimension.
#pragma once

#include <cstdint>
#include <cstdio>
#include <memory>
#include <string>
#include <string_view>
#include <unordered_map>
#include <unordered_set>
#include <vector>

#include "common/error.h"
#include "quant/quant.h"

namespace edgellm::gguf {

// Messages read "<path>: <field>: <what>".
struct Error : edgellm::Error {
    using edgellm::Error::Error;
};

enum class ValueType : uint32_t {
    UINT8 = 0,
    INT8 = 1,
    UINT16 = 2,
    INT16 = 3,
    UINT32 = 4,
    INT32 = 5,
    FLOAT32 = 6,
    BOOL = 7,
    STRING = 8,
    ARRAY = 9,
    UINT64 = 10,
    INT64 = 11,
    FLOAT64 = 12,
};

constexpr uint32_t kMagic = 0x46554747;  // "GGUF" read as a little-endian u32
constexpr uint32_t kVersion = 3;
constexpr uint32_t kDefaultAlignment = 32;
constexpr uint32_t kMaxDims = 4;
constexpr size_t kMaxNameLength = 63;  // tensor names longer than this are refused by llama.cpp

// "uint32", "string", ...; "unknown" for ids outside the enum.
const char* value_type_name(uint32_t type);
// Bytes of one scalar of the type; 0 for STRING, ARRAY and unknown ids.
size_t value_type_size(uint32_t type);

// One metadata entry. Scalars and numeric arrays point into the mapped file (possibly unaligned:
// copy out with memcpy); string arrays keep one view per element.
struct KV {
    std::string_view key;
    ValueType type;
    ValueType elem_type;   // arrays only
    uint64_t count = 1;    // array length; 1 for scalars
    const uint8_t* data;   // scalar bytes, string bytes, or the first array element
    uint64_t nbytes;       // bytes at data (string: length; numeric array: count * size)
    std::vector<std::string_view> strings;  // string arrays only
};

struct TensorInfo {
    std::string_view name;
    uint32_t n_dims;
    int64_t ne[kMaxDims];  // GGUF order; unused dims are 1
    quant::Type type;
    uint64_t offset;       // relative to the data section
    uint64_t nbytes;
    int64_t n_elements() const { return ne[0] * ne[1] * ne[2] * ne[3]; }
};

// A read-only memory map of a whole file (RAII).
class MappedFile {
public:
    explicit MappedFile(const std::string& path);
    ~MappedFile();
    MappedFile(const MappedFile&) = delete;
    MappedFile& operator=(const MappedFile&) = delete;
    const uint8_t* data() const { return data_; }
    uint64_t size() const { return size_; }

private:
    const uint8_t* data_ = nullptr;
    uint64_t size_ = 0;
};

class Reader {
public:
    // Maps and validates the whole header; throws gguf::Error naming the path and the field.
    explicit Reader(const std::string& path);

    const std::string& path() const { return path_; }
    uint32_t version() const { return version_; }
    uint32_t alignment() const { return alignment_; }
    uint64_t data_offset() const { return data_offset_; }  // absolute start of the data section
    uint64_t file_size() const { return file_.size(); }
    const uint8_t* bytes() const { return file_.data(); }  // the whole mapped file

    const std::vector<KV>& kvs() const { return kvs_; }  // file order
    const KV* find(std::string_view key) const;           // nullptr when absent
    // Typed getters: throw gguf::Error when the key is absent or holds another type.
    const KV& get(std::string_view key, ValueType type) const;
    uint32_t get_u32(std::string_view key) const;
    int32_t get_i32(std::string_view key) const;
    uint64_t get_u64(std::string_view key) const;
    float get_f32(std::string_view key) const;
    bool get_bool(std::string_view key) const;
    std::string_view get_string(std::string_view key) const;
    // Array getters check the element type; numeric arrays are copied out (the file gives no
    // alignment for them), string arrays are views into the map.
    const KV& get_array(std::string_view key, ValueType elem_type) const;
    std::vector<int32_t> get_i32_array(std::string_view key) const;
    std::vector<float> get_f32_array(std::string_view key) const;
    const std::vector<std::string_view>& get_string_array(std::string_view key) const;

    const std::vector<TensorInfo>& tensors() const { return tensors_; }  // file order
    const TensorInfo* find_tensor(std::string_view name) const;           // nullptr when absent
    const TensorInfo& tensor(std::string_view name) const;                // throws when absent
    // Start of the tensor's bytes inside the map (checked in bounds at open).
    const uint8_t* tensor_data(const TensorInfo& t) const { return file_.data() + data_offset_ + t.offset; }

private:
    [[noreturn]] void fail(const std::string& field, const std::string& what) const;
    void parse();

    std::string path_;
    MappedFile file_;
    uint32_t version_ = 0;
    uint32_t alignment_ = kDefaultAlignment;
    uint64_t data_offset_ = 0;
    std::vector<KV> kvs_;
    std::unordered_map<std::string_view, size_t> kv_index_;
    std::vector<TensorInfo> tensors_;
    std::unordered_map<std::string_view, size_t> tensor_index_;
};

// Streams a GGUF v3 file: add KVs and tensor infos, write_header(), write_tensor_data() for every
// tensor in declared order, finish(). Output goes to "<dir>/.<basename>.tmp-<pid>-<n>", renamed
// onto the target by finish(); abort() or the destructor removes it. Memory is O(header).
class Writer {
public:
    // Creates the temporary file now, so a missing folder or a permission problem is reported
    // before any work (the message names the path). alignment: a power of two.
    explicit Writer(const std::string& path, uint32_t alignment = kDefaultAlignment);
    ~Writer();
    Writer(const Writer&) = delete;
    Writer& operator=(const Writer&) = delete;

    const std::string& path() const { return path_; }
    const std::string& temp_path() const { return temp_path_; }
    uint32_t alignment() const { return alignment_; }

    // Scalars: `value` holds value_type_size(type) bytes (BOOL: one byte, 0 or 1).
    void add_scalar(const std::string& key, ValueType type, const void* value);
    void add_string(const std::string& key, std::string_view value);
    // Numeric array of n elements of elem_type (native little-endian layout).
    void add_array(const std::string& key, ValueType elem_type, const void* data, uint64_t n);
    void add_string_array(const std::string& key, const std::vector<std::string>& values);

    // ne in GGUF order (ne[0] innermost), 1..4 dims, each > 0; ne[0] a multiple of the block size.
    void add_tensor_info(const std::string& name, const std::vector<int64_t>& ne, quant::Type type);
    // Bytes the tensor's data must have.
    uint64_t tensor_nbytes(const std::string& name) const;

    void write_header();
    // Data of the next tensor in declared order; nbytes must equal its size.
    void write_tensor_data(const std::string& name, const void* data, uint64_t nbytes);
    // Flushes, syncs and renames the temporary file onto the target.
    void finish();
    // Removes the temporary file; the writer is unusable afterwards. Safe to call twice.
    void abort() noexcept;

    bool finished() const { return state_ == State::Finished; }

private:
    enum class State { Collecting, Writing, Finished, Aborted };
    struct Tensor {
        std::string name;
        uint32_t n_dims;
        int64_t ne[kMaxDims];
        quant::Type type;
        uint64_t nbytes;
        uint64_t offset;  // relative to the data section, set by write_header()
    };

    [[noreturn]] void fail(const std::string& field, const std::string& what);
    void begin_kv(const std::string& key, ValueType type);
    void require(State s, const std::string& what);
    void write_bytes(const void* data, size_t n);
    void write_padding(uint64_t written);

    std::string path_;
    std::string temp_path_;
    uint32_t alignment_;
    std::FILE* file_ = nullptr;
    State state_ = State::Collecting;
    std::vector<uint8_t> kv_bytes_;  // the serialized KV section
    uint64_t n_kv_ = 0;
    std::unordered_set<std::string> keys_;
    std::vector<Tensor> tensors_;
    std::unordered_map<std::string, size_t> tensor_index_;
    size_t next_tensor_ = 0;
    uint64_t data_written_ = 0;  // bytes of the data section written so far
};

}  // namespace edgellm::gguf
