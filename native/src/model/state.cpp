// Saved sessions (see state.h): written through a temporary file, read back with every field and
// the checksum checked before the caller touches its cache.
#include "model/state.h"

#include <unistd.h>

#include <atomic>
#include <cerrno>
#include <cstdio>
#include <cstring>
#include <memory>

#include "model/model.h"

namespace edgellm {

namespace {

constexpr char kMagic[8] = {'E', 'D', 'G', 'L', 'S', 'T', 'A', 'T'};
constexpr uint32_t kVersion = 1;
constexpr size_t kHeaderBytes = 8 + 4 + 8 + 8 * 4;

const char* kv_name(uint32_t t) {
    switch (static_cast<KvType>(t)) {
        case KvType::F16: return "f16";
        case KvType::F32: return "f32";
        case KvType::Q8_0: return "q8_0";
    }
    return "unknown";
}

uint64_t rotl(uint64_t x, int k) { return (x << k) | (x >> (64 - k)); }

constexpr uint64_t kP1 = 0x9E3779B185EBCA87ull, kP2 = 0xC2B2AE3D27D4EB4Full;

// Streams bytes into the state hash in any chunking (the result depends on the bytes only).
class Hasher {
public:
    explicit Hasher(uint64_t seed) : h_(seed ^ kP1) {}
    void update(const void* data, size_t n) {
        const auto* p = static_cast<const uint8_t*>(data);
        total_ += n;
        while (n > 0) {
            const size_t take = std::min(n, 8 - fill_);
            std::memcpy(buf_ + fill_, p, take);
            fill_ += take;
            p += take;
            n -= take;
            if (fill_ == 8) {
                uint64_t w;
                std::memcpy(&w, buf_, 8);
                h_ = rotl(h_ ^ (w * kP2), 31) * kP1;
                fill_ = 0;
            }
            // whole words straight from the input
            while (fill_ == 0 && n >= 8) {
                uint64_t w;
                std::memcpy(&w, p, 8);
                h_ = rotl(h_ ^ (w * kP2), 31) * kP1;
                p += 8;
                n -= 8;
            }
        }
    }
    uint64_t digest() const {
        uint64_t h = h_;
        for (size_t i = 0; i < fill_; ++i) h = rotl(h ^ (uint64_t(buf_[i]) * kP1), 11) * kP2;
        h ^= total_;
        h ^= h >> 33;
        h *= kP2;
        h ^= h >> 29;
        h *= kP1;
        return h ^ (h >> 32);
    }

private:
    uint64_t h_;
    uint64_t total_ = 0;
    uint8_t buf_[8] = {};
    size_t fill_ = 0;
};

// The file's contents cannot be used.
[[noreturn]] void fail(const std::string& path, const std::string& what) {
    throw StateError("state file " + path + ": " + what, false);
}

// The file cannot be read or written.
[[noreturn]] void io_fail(const std::string& path, const std::string& what) {
    throw StateError("state file " + path + ": " + what, true);
}

struct FileCloser {
    void operator()(std::FILE* f) const { std::fclose(f); }
};

// Writes through the hasher; remembers the first error.
class Out {
public:
    Out(std::FILE* f, Hasher& h) : f_(f), h_(h) {}
    void put(const void* p, size_t n) {
        if (n == 0) return;
        h_.update(p, n);
        if (ok_ && std::fwrite(p, 1, n, f_) != n) ok_ = false;
    }
    void u32(uint32_t v) { put(&v, 4); }
    void u64(uint64_t v) { put(&v, 8); }
    bool ok() const { return ok_; }

private:
    std::FILE* f_;
    Hasher& h_;
    bool ok_ = true;
};

std::atomic<unsigned> g_tmp_counter{0};

}  // namespace

uint64_t hash_bytes(const void* data, size_t n, uint64_t seed) {
    Hasher h(seed);
    h.update(data, n);
    return h.digest();
}

void write_state(const std::string& path, const StateShape& s, const KvCache& cache,
                 const std::vector<int32_t>& tokens, const float* logits) {
    const size_t slash = path.find_last_of('/');
    const std::string dir = slash == std::string::npos ? "" : path.substr(0, slash + 1);
    const std::string base = slash == std::string::npos ? path : path.substr(slash + 1);
    if (base.empty()) fail(path, "not a file name");
    const std::string tmp = dir + "." + base + ".tmp-" + std::to_string(::getpid()) + "-" +
                            std::to_string(g_tmp_counter.fetch_add(1));
    // The temporary file goes on every way out but the final rename.
    struct RemoveUnlessKept {
        const std::string& name;
        bool keep = false;
        ~RemoveUnlessKept() {
            if (!keep) std::remove(name.c_str());
        }
    } cleanup{tmp};
    std::unique_ptr<std::FILE, FileCloser> f(std::fopen(tmp.c_str(), "wb"));
    if (!f) io_fail(path, std::string("cannot write: ") + std::strerror(errno));

    Hasher h(0);
    Out out(f.get(), h);
    out.put(kMagic, 8);
    out.u32(kVersion);
    out.u64(s.model_id);
    for (uint32_t v : {s.n_vocab, s.n_layer, s.n_head_kv, s.head_dim, s.n_ctx, s.kv_type, uint32_t(tokens.size()),
                       logits ? s.n_vocab : 0u})
        out.u32(v);
    out.put(tokens.data(), tokens.size() * sizeof(int32_t));
    if (logits) out.put(logits, size_t(s.n_vocab) * sizeof(float));
    const size_t rb = cache.row_bytes();
    std::vector<uint8_t> row(2 * rb);
    for (uint32_t l = 0; l < s.n_layer; ++l)
        for (size_t p = 0; p < tokens.size(); ++p) {
            cache.get_row(l, int64_t(p), row.data(), row.data() + rb);
            out.put(row.data(), row.size());
        }
    const uint64_t sum = h.digest();  // the checksum itself is not hashed
    bool ok = out.ok() && std::fwrite(&sum, 8, 1, f.get()) == 1 && std::fflush(f.get()) == 0 &&
              ::fsync(::fileno(f.get())) == 0;
    int err = ok ? 0 : errno;
    if (std::fclose(f.release()) != 0 && ok) {
        ok = false;
        err = errno;
    }
    if (!ok) io_fail(path, std::string("cannot write: ") + std::strerror(err ? err : EIO));
    if (std::rename(tmp.c_str(), path.c_str()) != 0)
        io_fail(path, std::string("cannot write: ") + std::strerror(errno));
    cleanup.keep = true;
}

LoadedState read_state(const std::string& path, const StateShape& want, size_t row_bytes,
                       const std::string& model_path) {
    std::unique_ptr<std::FILE, FileCloser> f(std::fopen(path.c_str(), "rb"));
    if (!f) io_fail(path, std::string("cannot read: ") + std::strerror(errno));
    if (std::fseek(f.get(), 0, SEEK_END) != 0) io_fail(path, "cannot read: not a seekable file");
    const long end = std::ftell(f.get());
    if (end < 0) io_fail(path, "cannot read: not a seekable file");
    const uint64_t size = uint64_t(end);
    std::rewind(f.get());

    uint8_t head[kHeaderBytes];
    if (size < kHeaderBytes + 8 || std::fread(head, 1, kHeaderBytes, f.get()) != kHeaderBytes)
        fail(path, "truncated (" + std::to_string(size) + " bytes; not an edgellm state file)");
    if (std::memcmp(head, kMagic, 8) != 0) fail(path, "not an edgellm state file (bad magic)");
    uint32_t version;
    std::memcpy(&version, head + 8, 4);
    if (version != kVersion)
        fail(path, "version " + std::to_string(version) + " is not supported (this build reads version " +
                       std::to_string(kVersion) + ")");
    StateShape got;
    uint32_t n_tokens, n_logits;
    std::memcpy(&got.model_id, head + 12, 8);
    uint32_t* fields[] = {&got.n_vocab, &got.n_layer, &got.n_head_kv, &got.head_dim, &got.n_ctx, &got.kv_type,
                          &n_tokens, &n_logits};
    for (size_t i = 0; i < 8; ++i) std::memcpy(fields[i], head + 20 + 4 * i, 4);

    if (got.model_id != want.model_id || got.n_vocab != want.n_vocab || got.n_layer != want.n_layer ||
        got.n_head_kv != want.n_head_kv || got.head_dim != want.head_dim)
        fail(path, "saved with another model (this context runs " + model_path + ")");
    if (got.n_ctx != want.n_ctx)
        fail(path, "n_ctx: saved with a context of " + std::to_string(got.n_ctx) + " tokens; this context has " +
                       std::to_string(want.n_ctx));
    if (got.kv_type != want.kv_type)
        fail(path, std::string("kv_type: saved with a ") + kv_name(got.kv_type) + " KV cache; this context's is " +
                       kv_name(want.kv_type));
    if (n_tokens > got.n_ctx)
        fail(path, "n_tokens: " + std::to_string(n_tokens) + " is more than n_ctx " + std::to_string(got.n_ctx));
    if (n_logits != 0 && n_logits != got.n_vocab)
        fail(path, "n_logits: " + std::to_string(n_logits) + " is neither 0 nor n_vocab");
    const uint64_t body = uint64_t(n_tokens) * 4 + uint64_t(n_logits) * 4 +
                          uint64_t(got.n_layer) * n_tokens * 2 * row_bytes;
    const uint64_t expect = kHeaderBytes + body + 8;
    if (size != expect)
        fail(path, (size < expect ? "truncated: " : "trailing bytes: ") + std::to_string(size) +
                       " bytes where the header implies " + std::to_string(expect));

    LoadedState st;
    st.tokens.resize(n_tokens);
    st.logits.resize(n_logits);
    st.kv.resize(size_t(uint64_t(got.n_layer) * n_tokens * 2 * row_bytes));
    uint64_t sum = 0;
    bool ok = std::fread(st.tokens.data(), 4, n_tokens, f.get()) == n_tokens &&
              std::fread(st.logits.data(), 4, n_logits, f.get()) == n_logits &&
              std::fread(st.kv.data(), 1, st.kv.size(), f.get()) == st.kv.size() &&
              std::fread(&sum, 8, 1, f.get()) == 1;
    if (!ok) io_fail(path, "cannot read: " + std::string(std::ferror(f.get()) ? std::strerror(errno) : "truncated"));
    Hasher h(0);
    h.update(head, kHeaderBytes);
    h.update(st.tokens.data(), st.tokens.size() * 4);
    h.update(st.logits.data(), st.logits.size() * 4);
    h.update(st.kv.data(), st.kv.size());
    if (h.digest() != sum) fail(path, "corrupt (checksum mismatch)");
    for (size_t i = 0; i < st.tokens.size(); ++i)
        if (st.tokens[i] < 0 || uint32_t(st.tokens[i]) >= got.n_vocab)
            fail(path, "token " + std::to_string(i) + ": id " + std::to_string(st.tokens[i]) +
                           " is outside the vocabulary");
    return st;
}

}  // namespace edgellm
