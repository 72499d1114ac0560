// Mutation fuzzing of the GGUF reader: a valid file written by gguf::Writer is corrupted many ways
// (random bytes, extreme 32/64-bit values, truncation); every open must either succeed with every
// view in bounds or throw gguf::Error. Meant to run under -fsanitize=address,undefined.
// Usage: test_gguf_fuzz [iterations] [folder]
#include <unistd.h>

#include <algorithm>
#include <cstdint>
#include <cstdio>
#include <cstring>
#include <fstream>
#include <iterator>
#include <random>
#include <stdexcept>
#include <string>
#include <vector>

#include "gguf/gguf.h"

using namespace edgellm;

namespace {

std::vector<uint8_t> read_all(const std::string& path) {
    std::ifstream f(path, std::ios::binary);
    return {std::istreambuf_iterator<char>(f), std::istreambuf_iterator<char>()};
}

void write_all(const std::string& path, const std::vector<uint8_t>& bytes) {
    std::FILE* f = std::fopen(path.c_str(), "wb");
    if (!f) throw std::runtime_error("cannot write " + path);
    if (!bytes.empty()) std::fwrite(bytes.data(), 1, bytes.size(), f);
    std::fclose(f);
}

void write_sample(const std::string& path) {
    gguf::Writer w(path);
    w.add_string("general.architecture", "llama");
    uint32_t u = 30;
    w.add_scalar("llama.block_count", gguf::ValueType::UINT32, &u);
    float eps = 1e-5f;
    w.add_scalar("llama.attention.layer_norm_rms_epsilon", gguf::ValueType::FLOAT32, &eps);
    uint8_t yes = 1;
    w.add_scalar("tokenizer.ggml.add_bos_token", gguf::ValueType::BOOL, &yes);
    w.add_string_array("tokenizer.ggml.tokens", {"<s>", "</s>", "a", "b", "ab"});
    std::vector<float> scores = {0.f, 0.f, -1.f, -2.f, -3.f};
    w.add_array("tokenizer.ggml.scores", gguf::ValueType::FLOAT32, scores.data(), scores.size());
    std::vector<int32_t> types = {3, 3, 1, 1, 1};
    w.add_array("tokenizer.ggml.token_type", gguf::ValueType::INT32, types.data(), types.size());
    w.add_tensor_info("token_embd.weight", {32, 5}, quant::Type::Q8_0);
    w.add_tensor_info("output_norm.weight", {32}, quant::Type::F32);
    w.add_tensor_info("blk.0.ffn.weight", {256, 2}, quant::Type::Q4_K);
    w.write_header();
    for (const char* name : {"token_embd.weight", "output_norm.weight", "blk.0.ffn.weight"}) {
        std::vector<uint8_t> data(w.tensor_nbytes(name));
        for (size_t i = 0; i < data.size(); ++i) data[i] = static_cast<uint8_t>(i * 31 + 7);
        w.write_tensor_data(name, data.data(), data.size());
    }
    w.finish();
}

// Opens the file; on success reads every value and every tensor byte (ASan catches any overrun).
// Returns true when the file was accepted.
bool check(const std::string& path, uint64_t& sink) {
    try {
        gguf::Reader r(path);
        for (const gguf::KV& kv : r.kvs()) {
            for (uint64_t i = 0; i < kv.nbytes; ++i) sink += kv.data[i];
            for (std::string_view s : kv.strings)
                for (char c : s) sink += static_cast<uint8_t>(c);
        }
        for (const gguf::TensorInfo& t : r.tensors()) {
            const uint8_t* p = r.tensor_data(t);
            for (uint64_t i = 0; i < t.nbytes; ++i) sink += p[i];
        }
        return true;
    } catch (const gguf::Error&) {
        return false;
    }
}

}  // namespace

int main(int argc, char** argv) {
    long iterations = argc > 1 ? std::atol(argv[1]) : 20000;
    std::string folder = argc > 2 ? argv[2] : "/tmp";
    std::string base = folder + "/gguf-fuzz-" + std::to_string(::getpid());
    std::string sample = base + "-sample.gguf", mutant = base + "-mutant.gguf";
    write_sample(sample);
    const std::vector<uint8_t> good = read_all(sample);
    uint64_t sink = 0;
    if (!check(sample, sink)) {
        std::fprintf(stderr, "FAIL: the sample file is refused\n");
        return 1;
    }
    gguf::Reader ref(sample);
    const uint64_t header_end = ref.data_offset();

    std::mt19937_64 rng(12345);
    long accepted = 0;
    static const uint64_t extremes[] = {0, 1, 2, 3, 4, 5, 31, 32, 33, 0x7fffffffull, 0xffffffffull,
                                        0x100000000ull, 1ull << 62, 1ull << 63, ~0ull, ~0ull - 31};
    for (long it = 0; it < iterations; ++it) {
        std::vector<uint8_t> bytes = good;
        int n_mut = 1 + static_cast<int>(rng() % 3);
        for (int m = 0; m < n_mut; ++m) {
            // Mostly the header, where every count and offset lives.
            uint64_t limit = rng() % 8 ? header_end : bytes.size();
            if (limit == 0) continue;
            uint64_t pos = rng() % limit;
            switch (rng() % 4) {
                case 0: bytes[pos] = static_cast<uint8_t>(rng()); break;
                case 1: bytes[pos] ^= static_cast<uint8_t>(1u << (rng() % 8)); break;
                case 2: {
                    uint64_t v = extremes[rng() % (sizeof(extremes) / sizeof(extremes[0]))];
                    size_t width = rng() % 2 ? 8 : 4;
                    for (size_t b = 0; b < width && pos + b < bytes.size(); ++b) bytes[pos + b] = (v >> (8 * b)) & 0xff;
                    break;
                }
                case 3: bytes.resize(pos); break;
            }
        }
        write_all(mutant, bytes);
        accepted += check(mutant, sink);
    }
    // Plain truncation at every length must always be refused before the last tensor's end.
    for (uint64_t n = 0; n < good.size(); ++n) {
        write_all(mutant, std::vector<uint8_t>(good.begin(), good.begin() + static_cast<long>(n)));
        bool ok = check(mutant, sink);
        uint64_t need = 0;
        for (const gguf::TensorInfo& t : ref.tensors()) need = std::max(need, ref.data_offset() + t.offset + t.nbytes);
        if (ok != (n >= need)) {
            std::fprintf(stderr, "FAIL: truncation at %llu %s\n", static_cast<unsigned long long>(n),
                         ok ? "accepted" : "refused");
            return 1;
        }
    }
    std::remove(sample.c_str());
    std::remove(mutant.c_str());
    std::printf("ok: %ld mutants, %ld accepted (checksum %llu)\n", iterations, accepted,
                static_cast<unsigned long long>(sink));
    return 0;
}
