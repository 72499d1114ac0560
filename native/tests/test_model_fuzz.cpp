// Runs every file of a fuzz corpus (tests/helpers/fuzz.py writes one) through the C API: load, and
// when that succeeds tokenize, evaluate and sample a few tokens, take speculative (prompt lookup)
// steps, run a q8_0 KV cache, and save the session then load it back intact and damaged. A file
// must either be refused with a status and a message, or load and run; a damaged state file must
// be refused. Meant to run under -fsanitize=address,undefined, which turns any memory or UB error
// into a failure.
// Usage: test_model_fuzz CORPUS_DIR
#include <dirent.h>

#include <algorithm>
#include <cstdio>
#include <cstring>
#include <string>
#include <vector>

#include "edgellm.h"

namespace {

[[noreturn]] void die(const std::string& path, const char* what) {
    std::fprintf(stderr, "%s: %s (%s)\n", path.c_str(), what, edgellm_last_error());
    std::exit(1);
}

// Speculative steps, a q8_0 cache, and saved sessions on a model that runs.
void run_sessions(edgellm_model* model, edgellm_context* ctx, edgellm_sampler* smpl, const std::string& path,
                  const std::string& state, unsigned salt) {
    edgellm_speculator* spec = nullptr;
    if (edgellm_speculator_init(ctx, nullptr, nullptr, &spec) == EDGELLM_STATUS_OK) {
        edgellm_token out[16];
        size_t n = 0;
        edgellm_token pending = 0;
        const edgellm_token prompt[] = {1, 2, 3, 1, 2, 3, 1, 2};
        edgellm_context_truncate(ctx, 0);
        if (edgellm_context_eval(ctx, prompt, 7, false) == EDGELLM_STATUS_OK) {
            pending = prompt[7] % edgellm_model_n_vocab(model);
            for (int i = 0; i < 4; ++i) {
                if (edgellm_speculator_step(spec, smpl, pending, out, 16, &n) != EDGELLM_STATUS_OK || n == 0) break;
                pending = out[n - 1];
            }
        }
        edgellm_speculator_free(spec);
    }

    edgellm_context_params qp = edgellm_context_default_params();
    qp.n_ctx = 32;
    qp.n_threads = 1;
    qp.kv_type = EDGELLM_KV_TYPE_Q8_0;
    edgellm_context* q8 = nullptr;
    if (edgellm_context_init(model, &qp, &q8) == EDGELLM_STATUS_OK) {
        const edgellm_token t[] = {0, 1, 2};
        edgellm_context_eval(q8, t, 3, true);
        edgellm_context_free(q8);
    } else if (std::strlen(edgellm_last_error()) == 0) {
        die(path, "q8_0 cache refused without a message");
    }

    if (edgellm_context_n_past(ctx) == 0) return;
    if (edgellm_context_save_state(ctx, state.c_str()) != EDGELLM_STATUS_OK) die(path, "save_state failed");
    const uint32_t n_past = edgellm_context_n_past(ctx);
    if (edgellm_context_load_state(ctx, state.c_str()) != EDGELLM_STATUS_OK || edgellm_context_n_past(ctx) != n_past)
        die(path, "an intact state did not load back");
    // damage one byte (or cut the file) and load: refused, the context unchanged
    std::FILE* f = std::fopen(state.c_str(), "rb");
    std::vector<unsigned char> bytes;
    int c;
    while (f && (c = std::fgetc(f)) != EOF) bytes.push_back(static_cast<unsigned char>(c));
    if (f) std::fclose(f);
    if (bytes.empty()) die(path, "empty state file");
    if (salt % 3 == 0)
        bytes.resize(salt % bytes.size());
    else
        bytes[salt % bytes.size()] ^= static_cast<unsigned char>(1u << (salt % 8));
    f = std::fopen(state.c_str(), "wb");
    if (!f) die(path, "cannot rewrite the state file");
    std::fwrite(bytes.data(), 1, bytes.size(), f);
    std::fclose(f);
    if (edgellm_context_load_state(ctx, state.c_str()) == EDGELLM_STATUS_OK) die(path, "a damaged state loaded");
    if (std::strlen(edgellm_last_error()) == 0) die(path, "a damaged state was refused without a message");
    if (edgellm_context_n_past(ctx) != n_past) die(path, "a refused state changed the context");
}

// Returns true when the file loaded and ran.
bool run_case(const std::string& path, const std::string& state, unsigned salt) {
    edgellm_model* model = nullptr;
    if (edgellm_model_load(path.c_str(), nullptr, &model) != EDGELLM_STATUS_OK) {
        if (std::strlen(edgellm_last_error()) == 0) {
            std::fprintf(stderr, "%s: refused without a message\n", path.c_str());
            std::exit(1);
        }
        return false;
    }
    bool ran = false;
    edgellm_context_params cp = edgellm_context_default_params();
    cp.n_ctx = 64;
    cp.n_threads = 1;
    edgellm_context* ctx = nullptr;
    edgellm_sampler* smpl = nullptr;
    if (edgellm_context_init(model, &cp, &ctx) == EDGELLM_STATUS_OK &&
        edgellm_sampler_init(model, nullptr, &smpl) == EDGELLM_STATUS_OK) {
        const char text[] = "Hello world, fuzz <s> 123";
        edgellm_token toks[64];
        size_t n = 0;
        if (edgellm_tokenize(model, text, sizeof text - 1, true, true, toks, 64, &n) == EDGELLM_STATUS_OK) {
            if (n == 0) toks[n++] = 0;
            char piece[256];
            size_t len = 0;
            for (size_t i = 0; i < n; ++i) edgellm_token_to_piece(model, toks[i], true, piece, sizeof piece, &len);
            ran = true;
            for (int step = 0; step < 4 && ran; ++step) {
                if (edgellm_context_eval(ctx, toks, n, false) != EDGELLM_STATUS_OK) break;
                edgellm_token t = 0;
                if (edgellm_sampler_sample(smpl, edgellm_context_logits(ctx, nullptr), &t) != EDGELLM_STATUS_OK)
                    break;
                edgellm_sampler_accept(smpl, t);
                toks[0] = t;
                n = 1;
            }
            if (ran) run_sessions(model, ctx, smpl, path, state, salt);
        }
    }
    edgellm_sampler_free(smpl);
    edgellm_context_free(ctx);
    edgellm_model_free(model);
    return ran;
}

}  // namespace

int main(int argc, char** argv) {
    if (argc != 2) {
        std::fprintf(stderr, "usage: %s CORPUS_DIR\n", argv[0]);
        return 2;
    }
    const std::string dir = argv[1];
    std::vector<std::string> files;
    if (DIR* d = opendir(dir.c_str())) {
        while (dirent* e = readdir(d)) {
            const std::string name = e->d_name;
            if (name.size() > 5 && name.compare(name.size() - 5, 5, ".gguf") == 0) files.push_back(name);
        }
        closedir(d);
    }
    std::sort(files.begin(), files.end());
    if (files.empty()) {
        std::fprintf(stderr, "%s: no .gguf files\n", dir.c_str());
        return 2;
    }
    int ran = 0;
    for (size_t i = 0; i < files.size(); ++i) {
        if (i % 250 == 0) std::fprintf(stderr, "%zu/%zu %s\n", i, files.size(), files[i].c_str());
        ran += run_case(dir + "/" + files[i], dir + "/session.state", unsigned(i) * 2654435761u);
    }
    std::printf("%zu files: %d loaded and ran, %zu refused\n", files.size(), ran, files.size() - ran);
    return 0;
}
