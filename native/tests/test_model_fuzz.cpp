// Runs every file of a fuzz corpus (tests/helpers/fuzz.py writes one) through the C API: load, and
// when that succeeds tokenize, evaluate and sample a few tokens. A file must either be refused with
// a status and a message, or load and run. Meant to run under -fsanitize=address,undefined, which
// turns any memory or UB error into a failure.
// Usage: test_model_fuzz CORPUS_DIR
#include <dirent.h>

#include <algorithm>
#include <cstdio>
#include <cstring>
#include <string>
#include <vector>

#include "edgellm.h"

namespace {

// Returns true when the file loaded and ran.
bool run_case(const std::string& path) {
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
        ran += run_case(dir + "/" + files[i]);
    }
    std::printf("%zu files: %d loaded and ran, %zu refused\n", files.size(), ran, files.size() - ran);
    return 0;
}
