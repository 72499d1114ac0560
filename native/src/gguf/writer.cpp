// GGUF writer: header buffered in memory, tensor data streamed, output renamed into place at the end.
#include <fcntl.h>
#include <sys/stat.h>
#include <unistd.h>

#include <atomic>
#include <cerrno>
#include <cstring>

#include "gguf/gguf.h"
#include "gguf/names.h"

namespace edgellm::gguf {

namespace {

std::atomic<unsigned> g_temp_counter{0};

bool is_power_of_two(uint64_t a) { return a != 0 && (a & (a - 1)) == 0; }

bool is_numeric(ValueType t) {
    return t != ValueType::STRING && t != ValueType::ARRAY && static_cast<uint32_t>(t) <= 12;
}

template <typename T>
void append(std::vector<uint8_t>& buf, T v) {
    const auto* p = reinterpret_cast<const uint8_t*>(&v);
    buf.insert(buf.end(), p, p + sizeof(T));
}

void append_string(std::vector<uint8_t>& buf, std::string_view s) {
    append<uint64_t>(buf, s.size());
    buf.insert(buf.end(), s.begin(), s.end());
}

}  // namespace

Writer::Writer(const std::string& path, uint32_t alignment) : path_(path), alignment_(alignment) {
    if (!is_power_of_two(alignment)) fail("alignment", std::to_string(alignment) + " is not a power of two");
    size_t slash = path.rfind('/');
    std::string dir = slash == std::string::npos ? "." : (slash == 0 ? "/" : path.substr(0, slash));
    std::string base = slash == std::string::npos ? path : path.substr(slash + 1);
    if (base.empty() || base == "." || base == "..") fail("output", "not a file name");
    struct stat st;
    if (::stat(path.c_str(), &st) == 0 && S_ISDIR(st.st_mode)) fail("output", "is a directory");

    // A fresh name; a stale one left by a crashed process with the same pid is skipped, not reused.
    int fd = -1;
    for (int attempt = 0; fd < 0 && attempt < 100; ++attempt) {
        temp_path_ = (dir == "/" ? "" : dir) + "/." + base + ".tmp-" + std::to_string(::getpid()) + "-" +
                     std::to_string(g_temp_counter++);
        fd = ::open(temp_path_.c_str(), O_WRONLY | O_CREAT | O_EXCL | O_CLOEXEC, 0666);
        if (fd < 0 && errno != EEXIST) break;
    }
    if (fd < 0) {
        std::string why = std::strerror(errno);
        temp_path_.clear();
        fail("output", "cannot create a file in folder '" + dir + "': " + why);
    }
    file_ = ::fdopen(fd, "wb");
    if (!file_) {
        int e = errno;
        ::close(fd);
        ::unlink(temp_path_.c_str());
        fail("output", std::string("cannot open: ") + std::strerror(e));
    }
}

Writer::~Writer() {
    if (state_ != State::Finished) abort();
}

void Writer::fail(const std::string& field, const std::string& what) {
    throw Error(path_ + ": " + field + ": " + what);
}

void Writer::require(State s, const std::string& what) {
    if (state_ == s) return;
    const char* now = state_ == State::Collecting ? "the header is not written yet"
                      : state_ == State::Writing  ? "the header is already written"
                      : state_ == State::Finished ? "the file is already finished"
                                                  : "the writer was aborted";
    fail(what, now);
}

void Writer::begin_kv(const std::string& key, ValueType type) {
    require(State::Collecting, "metadata");
    if (key.empty()) fail("key ''", "keys must not be empty");
    if (keys_.count(key)) fail("key " + quote(key), "duplicate key");
    keys_.insert(key);
    append_string(kv_bytes_, key);
    append<uint32_t>(kv_bytes_, static_cast<uint32_t>(type));
    ++n_kv_;
}

void Writer::add_scalar(const std::string& key, ValueType type, const void* value) {
    require(State::Collecting, "metadata");
    if (!is_numeric(type))
        fail("key " + quote(key),
             std::string("add_scalar needs a numeric or bool type, got ") + value_type_name(static_cast<uint32_t>(type)));
    size_t size = value_type_size(static_cast<uint32_t>(type));
    const auto* p = static_cast<const uint8_t*>(value);
    if (type == ValueType::BOOL && *p > 1) fail("key " + quote(key), "bool value must be 0 or 1");
    if (key == "general.alignment") {
        if (type != ValueType::UINT32)
            fail("key 'general.alignment'",
                 std::string("type is ") + value_type_name(static_cast<uint32_t>(type)) + ", expected uint32");
        uint32_t a;
        std::memcpy(&a, p, 4);
        if (!is_power_of_two(a)) fail("key 'general.alignment'", std::to_string(a) + " is not a power of two");
        if (keys_.count(key) == 0) alignment_ = a;
    }
    begin_kv(key, type);
    kv_bytes_.insert(kv_bytes_.end(), p, p + size);
}

void Writer::add_string(const std::string& key, std::string_view value) {
    if (key == "general.alignment") fail("key 'general.alignment'", "type is string, expected uint32");
    begin_kv(key, ValueType::STRING);
    append_string(kv_bytes_, value);
}

void Writer::add_array(const std::string& key, ValueType elem_type, const void* data, uint64_t n) {
    require(State::Collecting, "metadata");
    if (!is_numeric(elem_type))
        fail("key " + quote(key), std::string("add_array needs a numeric or bool element type, got ") +
                                      value_type_name(static_cast<uint32_t>(elem_type)));
    if (key == "general.alignment") fail("key 'general.alignment'", "type is array, expected uint32");
    size_t size = value_type_size(static_cast<uint32_t>(elem_type));
    const auto* p = static_cast<const uint8_t*>(data);
    if (elem_type == ValueType::BOOL)
        for (uint64_t i = 0; i < n; ++i)
            if (p[i] > 1) fail("key " + quote(key), "bool element " + std::to_string(i) + " must be 0 or 1");
    begin_kv(key, ValueType::ARRAY);
    append<uint32_t>(kv_bytes_, static_cast<uint32_t>(elem_type));
    append<uint64_t>(kv_bytes_, n);
    if (n) kv_bytes_.insert(kv_bytes_.end(), p, p + n * size);
}

void Writer::add_string_array(const std::string& key, const std::vector<std::string>& values) {
    if (key == "general.alignment") fail("key 'general.alignment'", "type is array, expected uint32");
    begin_kv(key, ValueType::ARRAY);
    append<uint32_t>(kv_bytes_, static_cast<uint32_t>(ValueType::STRING));
    append<uint64_t>(kv_bytes_, values.size());
    for (const std::string& s : values) append_string(kv_bytes_, s);
}

void Writer::add_tensor_info(const std::string& name, const std::vector<int64_t>& ne, quant::Type type) {
    require(State::Collecting, "tensor infos");
    std::string field = "tensor " + quote(name);
    if (name.empty()) fail(field, "names must not be empty");
    if (name.size() > kMaxNameLength)
        fail(field, "name is " + std::to_string(name.size()) + " bytes, at most " + std::to_string(kMaxNameLength));
    if (tensor_index_.count(name)) fail(field, "duplicate tensor name");
    if (ne.empty() || ne.size() > kMaxDims)
        fail(field, "has " + std::to_string(ne.size()) + " dims, expected 1 to " + std::to_string(kMaxDims));
    const quant::Traits* tr = quant::traits(static_cast<uint32_t>(type));
    if (!tr) fail(field, "unknown tensor type id " + std::to_string(static_cast<uint32_t>(type)));

    Tensor t{};
    t.name = name;
    t.n_dims = static_cast<uint32_t>(ne.size());
    t.type = type;
    int64_t n_elements = 1;
    for (uint32_t d = 0; d < kMaxDims; ++d) {
        t.ne[d] = d < ne.size() ? ne[d] : 1;
        if (t.ne[d] <= 0) fail(field, "ne[" + std::to_string(d) + "] is " + std::to_string(t.ne[d]) + ", must be > 0");
        if (__builtin_mul_overflow(n_elements, t.ne[d], &n_elements)) fail(field, "element count overflows");
    }
    const std::string why = tensor_bytes(static_cast<uint32_t>(type), t.ne[0],
                                         static_cast<uint64_t>(n_elements / t.ne[0]), &t.nbytes);
    if (!why.empty()) fail(field, why);
    tensor_index_.emplace(name, tensors_.size());
    tensors_.push_back(std::move(t));
}

uint64_t Writer::tensor_nbytes(const std::string& name) const {
    auto it = tensor_index_.find(name);
    if (it == tensor_index_.end()) throw Error(path_ + ": tensor " + quote(name) + ": not declared");
    return tensors_[it->second].nbytes;
}

void Writer::write_bytes(const void* data, size_t n) {
    if (n == 0) return;
    if (std::fwrite(data, 1, n, file_) != n) {
        int e = errno;
        abort();
        fail("output", std::string("write failed: ") + std::strerror(e));
    }
}

void Writer::write_padding(uint64_t written) {
    static const uint8_t zeros[256] = {};
    uint64_t pad = (alignment_ - written % alignment_) % alignment_;
    while (pad > 0) {
        size_t n = pad < sizeof(zeros) ? static_cast<size_t>(pad) : sizeof(zeros);
        write_bytes(zeros, n);
        pad -= n;
    }
}

void Writer::write_header() {
    require(State::Collecting, "header");
    if (alignment_ != kDefaultAlignment && keys_.count("general.alignment") == 0) {
        uint32_t a = alignment_;
        add_scalar("general.alignment", ValueType::UINT32, &a);
    }
    // Offsets relative to the data section, each tensor aligned.
    uint64_t offset = 0;
    for (Tensor& t : tensors_) {
        t.offset = offset;
        uint64_t end;
        if (__builtin_add_overflow(offset, t.nbytes, &end) || end > UINT64_MAX - alignment_)
            fail("tensor " + quote(t.name), "data offset overflows");
        offset = (end + alignment_ - 1) / alignment_ * alignment_;
    }

    std::vector<uint8_t> head;
    append<uint32_t>(head, kMagic);
    append<uint32_t>(head, kVersion);
    append<uint64_t>(head, tensors_.size());
    append<uint64_t>(head, n_kv_);
    uint64_t written = 0;
    write_bytes(head.data(), head.size());
    written += head.size();
    write_bytes(kv_bytes_.data(), kv_bytes_.size());
    written += kv_bytes_.size();
    std::vector<uint8_t>().swap(kv_bytes_);

    std::vector<uint8_t> info;
    for (const Tensor& t : tensors_) {
        info.clear();
        append_string(info, t.name);
        append<uint32_t>(info, t.n_dims);
        for (uint32_t d = 0; d < t.n_dims; ++d) append<uint64_t>(info, static_cast<uint64_t>(t.ne[d]));
        append<uint32_t>(info, static_cast<uint32_t>(t.type));
        append<uint64_t>(info, t.offset);
        write_bytes(info.data(), info.size());
        written += info.size();
    }
    write_padding(written);
    state_ = State::Writing;
}

void Writer::write_tensor_data(const std::string& name, const void* data, uint64_t nbytes) {
    std::string field = "tensor " + quote(name);
    require(State::Writing, field);
    if (next_tensor_ >= tensors_.size()) {
        if (tensor_index_.count(name)) fail(field, "data already written");
        fail(field, "not declared");
    }
    const Tensor& t = tensors_[next_tensor_];
    if (t.name != name) {
        if (!tensor_index_.count(name)) fail(field, "not declared");
        fail(field, "written out of order: the next tensor is " + quote(t.name));
    }
    if (nbytes != t.nbytes)
        fail(field, "data is " + std::to_string(nbytes) + " bytes, expected " + std::to_string(t.nbytes));
    write_bytes(data, static_cast<size_t>(nbytes));
    data_written_ += nbytes;
    write_padding(data_written_);
    data_written_ = (data_written_ + alignment_ - 1) / alignment_ * alignment_;
    ++next_tensor_;
}

void Writer::finish() {
    require(State::Writing, "finish");
    if (next_tensor_ < tensors_.size())
        fail("tensor " + quote(tensors_[next_tensor_].name),
             "data not written (" + std::to_string(tensors_.size() - next_tensor_) + " of " +
                 std::to_string(tensors_.size()) + " tensors missing)");
    std::FILE* f = file_;
    file_ = nullptr;
    int e = 0;
    if (std::fflush(f) != 0) e = errno;
    if (e == 0 && ::fsync(::fileno(f)) != 0) e = errno;
    if (std::fclose(f) != 0 && e == 0) e = errno;
    if (e != 0) {
        abort();
        fail("output", std::string("write failed: ") + std::strerror(e));
    }
    if (std::rename(temp_path_.c_str(), path_.c_str()) != 0) {
        e = errno;
        abort();
        fail("output", "cannot rename the temporary file '" + temp_path_ + "' onto it: " + std::strerror(e));
    }
    state_ = State::Finished;
}

void Writer::abort() noexcept {
    if (state_ == State::Finished || state_ == State::Aborted) return;
    if (file_) {
        std::fclose(file_);
        file_ = nullptr;
    }
    if (!temp_path_.empty()) ::unlink(temp_path_.c_str());
    state_ = State::Aborted;
}

}  // namespace edgellm::gguf
