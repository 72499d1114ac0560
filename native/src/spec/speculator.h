// Speculative decoding: draft tokens cheaply, verify them all in one batched pass of the target.
//
// Drafts come from a small draft model with the same vocabulary (its own context, kept in step
// with the target's tokens by prefix reuse) or, without one, from prompt lookup: the longest
// recent n-gram of the context that occurred before, continued as it continued then.
//
// Verification keeps the target's distribution exactly:
//   - greedy, and every deterministic draft (lookup; a greedy draft model): the target samples
//     each position itself and keeps going while it picks the drafted token. Greedy output is the
//     target's plain greedy output, bit for bit (a batched pass gives the same logits as decoding
//     token by token, see model/attention.cpp and ops/matmul.cpp).
//   - a sampling draft model: token x drafted from q is accepted with probability min(1, p(x)/q(x));
//     on rejection the token is drawn from max(0, p - q), normalised.
// The draft length adapts: it grows by 2 after a step that accepted every drafted token and
// falls to one more than the accepted count after a rejection.
#pragma once

#include <cstddef>
#include <cstdint>
#include <functional>
#include <vector>

#include "model/model.h"
#include "sampling/sampler.h"

namespace edgellm {

struct SpecParams {
    int32_t draft_max = 8;  // most tokens drafted per step
    int32_t draft_min = 1;  // the adaptive length never falls below this
    // Draft model: stop drafting when its top probability is below this. A quantized copy of the
    // target agrees with it more often than its top probability says (SmolLM2 q4_0 drafting for its
    // f16 target, 1,275 tokens: top probability 0.2-0.3 -> 43-48% agreement, 0.3-0.4 -> 61-68%), and a
    // drafted token pays for itself from ~45% agreement on 2 cores (draft step ~0.4-0.5 of a target
    // step, ~0.1 more per token verified), which 0.2 marks.
    float p_min = 0.2f;
    // Draft model: it proposes only the token ids below this (in BPE and SentencePiece vocabularies
    // the early ids are the frequent ones) and the ids already in the context (the prompt and the
    // output so far); 0 lets it propose any. A packed (quantized) draft head then computes only those
    // rows (Context::set_output_rows): SmolLM2's 49,152-token q8_0 head reads a third of its 30 MB.
    // The f16 target's own tokens lie in that set 95-100% of the time on open and quoting prompts;
    // its q4_0 draft went 1.25x -> 1.30x over plain decode (paired runs, the bench's five prompts).
    int32_t draft_vocab = 16384;
    int32_t ngram_min = 3;  // prompt lookup: n-gram lengths tried, longest first (shorter ones
                            // match too often by chance: their drafts mostly fail)
    int32_t ngram_max = 4;
};

struct SpecStats {
    uint64_t steps = 0;     // target passes
    uint64_t drafted = 0;   // tokens proposed
    uint64_t accepted = 0;  // proposed tokens the target kept
};

class Speculator {
public:
    using IsEog = std::function<bool(int32_t)>;

    // draft: nullptr for prompt lookup. Both contexts must outlive the speculator. Throws Error
    // naming the field for bad parameters.
    Speculator(Context& target, Context* draft, int32_t n_vocab, const SpecParams& params, IsEog is_eog);

    // One step. `pending` is the last chosen token (already accepted by smpl), not yet in the
    // target's cache. Evaluates pending plus up to draft_max drafted tokens in one target pass and
    // appends to `out` the tokens chosen: the accepted drafts, then the target's own token; at most
    // n_max (>= 1) of them, ending early after an end-of-generation token. Each is accepted by smpl.
    // Afterwards the target's cache holds pending and every token out except the last (the new
    // pending). ContextFull when the cache has no room for pending (nothing evaluated).
    void step(Sampler& smpl, int32_t pending, size_t n_max, std::vector<int32_t>& out);

    const SpecStats& stats() const { return stats_; }

private:
    void propose_lookup(const std::vector<int32_t>& seq, size_t k);
    void propose_draft(Sampler& smpl, const std::vector<int32_t>& seq, size_t k);
    void verify(Sampler& smpl, int32_t pending, uint32_t n0, std::vector<int32_t>& out);
    int32_t verify_sampled(Sampler& smpl, const float* row, size_t i, bool* accepted);

    Context& target_;
    Context* draft_;
    SpecParams p_;
    IsEog is_eog_;
    int32_t n_vocab_ = 0;
    int32_t k_;  // current draft length
    SpecStats stats_;
    // per step
    std::vector<int32_t> seq_, drafts_, batch_;
    std::vector<std::vector<TokenProb>> q_;  // a sampling draft's distributions, per drafted token
    std::vector<TokenProb> p_dist_, resid_;
    std::vector<double> q_dense_;
};

}  // namespace edgellm
