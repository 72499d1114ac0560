// The sampler: a chain of small steps over one row of logits.
//   penalties (repeat, frequency, presence over the last penalty_last_n accepted tokens)
//   -> greedy when temperature <= 0
//   -> top-k -> top-p -> min-p -> temperature -> draw with the seeded random stream.
// The random stream is our own (splitmix/xoshiro-style, defined bit for bit), so the same seed
// gives the same tokens on every platform and standard library.
#pragma once

#include <cstddef>
#include <cstdint>
#include <vector>

namespace edgellm {

struct SamplerParams {
    float temperature = 0.8f;
    int32_t top_k = 40;
    float top_p = 0.95f;
    float min_p = 0.05f;
    float repeat_penalty = 1.0f;
    float frequency_penalty = 0.0f;
    float presence_penalty = 0.0f;
    int32_t penalty_last_n = 64;
    uint64_t seed = 0;
};

// xoshiro256** seeded through splitmix64: 64-bit outputs defined bit for bit.
class Rng {
public:
    explicit Rng(uint64_t seed) { seed_with(seed); }
    void seed_with(uint64_t seed);
    uint64_t next_u64();
    double next_double();  // uniform in [0, 1): the top 53 bits of next_u64() times 2^-53

private:
    uint64_t s_[4];
};

// One token's probability in a distribution.
struct TokenProb {
    int32_t id;
    double p;
};

class Sampler {
public:
    // Throws edgellm::Error naming the field for out-of-range parameters ("top_p: 1.5 is outside (0, 1]").
    Sampler(const SamplerParams& params, int32_t n_vocab);

    // Throws edgellm::Error when a logit is NaN or +inf, or when every logit is -inf.
    int32_t sample(const float* logits);  // one row of n_vocab logits, not modified
    void accept(int32_t token);           // tokens outside [0, n_vocab) are not recorded
    void reset();

    // For speculative decoding:
    // The distribution sample() draws from for this row (penalties from the current history):
    // {argmax, 1} when greedy, else the candidates the filters keep with their tempered,
    // normalised probabilities (zero weights dropped). Same validation as sample().
    void distribution(const float* logits, std::vector<TokenProb>& out);
    // Draws an id from weights (need not be normalised; at least one positive) with this stream.
    int32_t draw_from(const std::vector<TokenProb>& weights);
    double uniform() { return rng_.next_double(); }  // [0, 1) from this stream
    uint64_t next_seed() { return rng_.next_u64(); }
    // A copy (history included) with its own random stream.
    Sampler fork(uint64_t seed) const;
    bool greedy() const { return params_.temperature == 0.0f; }

    const SamplerParams& params() const { return params_; }
    int32_t n_vocab() const { return n_vocab_; }

private:
    struct Candidate {
        float logit;  // after penalties; never -inf, NaN or +inf
        int32_t id;
    };

    void load(const float* logits);  // validates, copies into work_ and applies the penalties there
    int32_t argmax() const;          // over work_; the lowest id on ties
    void select_top_k();             // cand_ = the top-k of work_ (sorted), or every finite logit (id order)
    void apply_top_p();
    void apply_min_p();
    int32_t draw();

    SamplerParams params_;
    int32_t n_vocab_;
    Rng rng_;
    std::vector<int32_t> history_;   // ring of the last penalty_last_n accepted tokens (grows until full)
    size_t history_pos_ = 0;         // next slot to write once full
    std::vector<int32_t> recent_;    // scratch: sorted copy of the history
    std::vector<float> work_;        // scratch: the penalized logits, n_vocab
    std::vector<Candidate> cand_;    // scratch: the candidate list (capacity n_vocab)
    std::vector<double> prob_;       // scratch: unnormalized weights of the candidates
    bool cand_sorted_ = false;       // cand_ is in descending logit order (ties: ascending id)
};

}  // namespace edgellm
