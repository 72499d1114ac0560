// Python binding of the C API (edgellm.h): _core.Model, _core.Context, _core.Sampler,
// _core.Detokenizer, and the error types its statuses map to. Nothing here reaches past the C API.
#include <pybind11/numpy.h>
#include <pybind11/stl.h>

#include <algorithm>
#include <cstring>
#include <memory>
#include <string>
#include <vector>

#include "bindings.h"
#include "edgellm.h"

namespace py = pybind11;

namespace edgellm_py {

namespace {

struct Errors {
    py::object invalid_argument, model_file, invalid_file, unsupported, context_full, state_file, base;
};

Errors& errors() {
    static Errors e;
    return e;
}

// Messages may quote bytes from a hostile file: decode them leniently. (Not named set_error: with a
// const char* message, argument-dependent lookup would pick pybind11::set_error, which returns.)
[[noreturn]] void throw_error(const py::object& type, const std::string& msg) {
    PyObject* text = PyUnicode_DecodeUTF8(msg.data(), static_cast<Py_ssize_t>(msg.size()), "replace");
    if (!text) throw py::error_already_set();
    PyErr_SetObject(type.ptr(), text);
    Py_DECREF(text);
    throw py::error_already_set();
}

[[noreturn]] void raise(edgellm_status status) {
    const Errors& e = errors();
    const py::object* type = &e.base;
    switch (status) {
        case EDGELLM_STATUS_INVALID_ARGUMENT: type = &e.invalid_argument; break;
        case EDGELLM_STATUS_IO: type = &e.model_file; break;
        case EDGELLM_STATUS_INVALID_FILE: type = &e.invalid_file; break;
        case EDGELLM_STATUS_UNSUPPORTED: type = &e.unsupported; break;
        case EDGELLM_STATUS_CONTEXT_FULL: type = &e.context_full; break;
        case EDGELLM_STATUS_OUT_OF_MEMORY: throw std::bad_alloc();
        default: break;
    }
    std::string msg = edgellm_last_error();
    if (msg.empty()) msg = edgellm_status_name(status);
    throw_error(*type, msg);
}

void check(edgellm_status status) {
    if (status != EDGELLM_STATUS_OK) raise(status);
}

// Owns an edgellm_model; contexts, samplers and detokenizers hold a shared_ptr so the model
// outlives them whatever order Python frees things in.
struct ModelHandle {
    edgellm_model* ptr = nullptr;
    ~ModelHandle() { edgellm_model_free(ptr); }
};
using ModelRef = std::shared_ptr<ModelHandle>;

class PyModel {
public:
    PyModel(const std::string& path, bool vocab_only) : h_(std::make_shared<ModelHandle>()) {
        edgellm_model_params p = edgellm_model_default_params();
        p.vocab_only = vocab_only;
        edgellm_status st;
        {
            py::gil_scoped_release nogil;
            st = edgellm_model_load(path.c_str(), &p, &h_->ptr);
        }
        check(st);
    }
    const ModelRef& ref() const { return h_; }
    const edgellm_model* get() const { return h_->ptr; }

    py::object meta_string(const std::string& key) const {
        size_t len = 0;
        const char* s = edgellm_model_meta_string(get(), key.c_str(), &len);
        if (!s) return py::none();
        return py::reinterpret_steal<py::object>(PyUnicode_DecodeUTF8(s, static_cast<Py_ssize_t>(len), "replace"));
    }

    std::vector<int32_t> tokenize(const std::string& text, bool add_special, bool parse_special) const {
        std::vector<int32_t> ids(text.size() + 8);
        size_t n = 0;
        edgellm_status st;
        {
            py::gil_scoped_release nogil;
            st = edgellm_tokenize(get(), text.data(), text.size(), add_special, parse_special, ids.data(),
                                  ids.size(), &n);
            if (st == EDGELLM_STATUS_BUFFER_TOO_SMALL) {
                ids.resize(n);
                st = edgellm_tokenize(get(), text.data(), text.size(), add_special, parse_special, ids.data(),
                                      ids.size(), &n);
            }
        }
        check(st);
        ids.resize(n);
        return ids;
    }

    py::str detokenize(const std::vector<int32_t>& tokens, bool special) const {
        std::string buf(tokens.size() * 8 + 16, '\0');
        size_t n = 0;
        edgellm_status st = edgellm_detokenize(get(), tokens.data(), tokens.size(), special, buf.data(), buf.size(), &n);
        if (st == EDGELLM_STATUS_BUFFER_TOO_SMALL) {
            buf.resize(n);
            st = edgellm_detokenize(get(), tokens.data(), tokens.size(), special, buf.data(), buf.size(), &n);
        }
        check(st);
        return py::reinterpret_steal<py::str>(PyUnicode_DecodeUTF8(buf.data(), static_cast<Py_ssize_t>(n), "strict"));
    }

    py::bytes token_to_piece(int32_t token, bool special) const {
        std::string buf(64, '\0');
        size_t n = 0;
        edgellm_status st = edgellm_token_to_piece(get(), token, special, buf.data(), buf.size(), &n);
        if (st == EDGELLM_STATUS_BUFFER_TOO_SMALL) {
            buf.resize(n);
            st = edgellm_token_to_piece(get(), token, special, buf.data(), buf.size(), &n);
        }
        check(st);
        return py::bytes(buf.data(), n);
    }

private:
    ModelRef h_;
};

class PyContext {
public:
    PyContext(const PyModel& model, uint32_t n_ctx, uint32_t n_batch, int32_t n_threads, int kv_type)
        : model_(model.ref()) {
        edgellm_context_params p = edgellm_context_default_params();
        p.n_ctx = n_ctx;
        p.n_batch = n_batch;
        p.n_threads = n_threads;
        p.kv_type = static_cast<edgellm_kv_type>(kv_type);
        check(edgellm_context_init(model_->ptr, &p, &ctx_));
    }
    ~PyContext() { edgellm_context_free(ctx_); }
    PyContext(const PyContext&) = delete;
    PyContext& operator=(const PyContext&) = delete;

    edgellm_context* get() const {
        if (!ctx_) throw std::runtime_error("the context is closed");
        return ctx_;
    }
    void close() {
        edgellm_context_free(ctx_);
        ctx_ = nullptr;
    }

    void eval(const std::vector<int32_t>& tokens, bool logits_all) {
        edgellm_context* c = get();
        edgellm_status st;
        {
            py::gil_scoped_release nogil;
            st = edgellm_context_eval(c, tokens.data(), tokens.size(), logits_all);
        }
        check(st);
    }

    // A copy of the last eval's logits, rows x n_vocab.
    py::array_t<float> logits() const {
        size_t rows = 0;
        const float* p = edgellm_context_logits(get(), &rows);
        const size_t n_vocab = static_cast<size_t>(edgellm_model_n_vocab(model_->ptr));
        py::array_t<float> out({rows, n_vocab});
        if (p && rows) std::memcpy(out.mutable_data(), p, rows * n_vocab * sizeof(float));
        return out;
    }

    size_t prefill(const std::vector<int32_t>& tokens) {
        edgellm_context* c = get();
        size_t kept = 0;
        edgellm_status st;
        {
            py::gil_scoped_release nogil;
            st = edgellm_context_prefill(c, tokens.data(), tokens.size(), &kept);
        }
        check(st);
        return kept;
    }

    std::vector<int32_t> tokens() const {
        size_t n = 0;
        edgellm_context_tokens(get(), nullptr, 0, &n);
        std::vector<int32_t> t(n);
        check(edgellm_context_tokens(get(), t.data(), t.size(), &n));
        return t;
    }

    // Saved sessions: every failure is a StateFileError (the message names the file and field).
    void save_state(const std::string& path) const {
        edgellm_status st;
        {
            py::gil_scoped_release nogil;
            st = edgellm_context_save_state(get(), path.c_str());
        }
        state_check(st);
    }
    void load_state(const std::string& path) {
        edgellm_context* c = get();
        edgellm_status st;
        {
            py::gil_scoped_release nogil;
            st = edgellm_context_load_state(c, path.c_str());
        }
        state_check(st);
    }

    const float* row(int64_t r) const {
        size_t rows = 0;
        const float* p = edgellm_context_logits(get(), &rows);
        if (!p || rows == 0) {
            throw_error(errors().invalid_argument, "no logits: evaluate tokens first");
        }
        if (r < 0) r += static_cast<int64_t>(rows);
        if (r < 0 || r >= static_cast<int64_t>(rows)) throw py::index_error("logits row out of range");
        return p + static_cast<size_t>(r) * static_cast<size_t>(edgellm_model_n_vocab(model_->ptr));
    }

    ModelRef model_ref() const { return model_; }

private:
    static void state_check(edgellm_status st) {
        if (st == EDGELLM_STATUS_IO || st == EDGELLM_STATUS_INVALID_FILE)
            throw_error(errors().state_file, edgellm_last_error());
        check(st);
    }

    ModelRef model_;
    edgellm_context* ctx_ = nullptr;
};

class PySampler {
public:
    PySampler(const PyModel& model, float temperature, int32_t top_k, float top_p, float min_p,
              float repeat_penalty, float frequency_penalty, float presence_penalty, int32_t penalty_last_n,
              uint64_t seed)
        : model_(model.ref()) {
        edgellm_sampler_params p = edgellm_sampler_default_params();
        p.temperature = temperature;
        p.top_k = top_k;
        p.top_p = top_p;
        p.min_p = min_p;
        p.repeat_penalty = repeat_penalty;
        p.frequency_penalty = frequency_penalty;
        p.presence_penalty = presence_penalty;
        p.penalty_last_n = penalty_last_n;
        p.seed = seed;
        check(edgellm_sampler_init(model_->ptr, &p, &s_));
    }
    ~PySampler() { edgellm_sampler_free(s_); }
    PySampler(const PySampler&) = delete;
    PySampler& operator=(const PySampler&) = delete;

    int32_t sample(py::array_t<float, py::array::c_style | py::array::forcecast> logits) {
        const auto n_vocab = static_cast<py::ssize_t>(edgellm_model_n_vocab(model_->ptr));
        if (logits.ndim() != 1 || logits.shape(0) != n_vocab) {
            throw_error(errors().invalid_argument, "logits: expected a 1-D array of " + std::to_string(n_vocab) +
                                                     " floats");
        }
        edgellm_token t = -1;
        check(edgellm_sampler_sample(s_, logits.data(), &t));
        return t;
    }
    int32_t sample_context(const PyContext& ctx, int64_t row) {
        edgellm_token t = -1;
        check(edgellm_sampler_sample(s_, ctx.row(row), &t));
        return t;
    }
    void accept(int32_t t) { edgellm_sampler_accept(s_, t); }
    void reset() { edgellm_sampler_reset(s_); }
    edgellm_sampler* get() const { return s_; }

private:
    ModelRef model_;
    edgellm_sampler* s_ = nullptr;
};

// Holds both contexts (and so their models) alive while it lives.
class PySpeculator {
public:
    PySpeculator(py::object target, py::object draft, int32_t draft_max, int32_t draft_min, float p_min,
                 int32_t ngram_min, int32_t ngram_max, int32_t draft_vocab)
        : target_(std::move(target)), draft_(std::move(draft)) {
        edgellm_spec_params p = edgellm_spec_default_params();
        p.draft_max = draft_max;
        p.draft_min = draft_min;
        p.p_min = p_min;
        p.ngram_min = ngram_min;
        p.ngram_max = ngram_max;
        p.draft_vocab = draft_vocab;
        edgellm_context* d = draft_.is_none() ? nullptr : draft_.cast<PyContext&>().get();
        check(edgellm_speculator_init(target_.cast<PyContext&>().get(), d, &p, &s_));
        buf_.resize(static_cast<size_t>(draft_max) + 1);
    }
    ~PySpeculator() { edgellm_speculator_free(s_); }
    PySpeculator(const PySpeculator&) = delete;
    PySpeculator& operator=(const PySpeculator&) = delete;

    std::vector<int32_t> step(PySampler& smpl, int32_t pending, size_t n_max) {
        if (n_max == 0) return {};
        n_max = std::min(n_max, buf_.size());
        target_.cast<PyContext&>().get();  // not closed
        if (!draft_.is_none()) draft_.cast<PyContext&>().get();
        size_t n = 0;
        edgellm_status st;
        {
            py::gil_scoped_release nogil;
            st = edgellm_speculator_step(s_, smpl.get(), pending, buf_.data(), n_max, &n);
        }
        check(st);
        return std::vector<int32_t>(buf_.begin(), buf_.begin() + static_cast<std::ptrdiff_t>(n));
    }
    py::tuple stats() const {
        const edgellm_spec_stats st = edgellm_speculator_stats(s_);
        return py::make_tuple(st.steps, st.drafted, st.accepted);
    }

private:
    py::object target_, draft_;
    edgellm_speculator* s_ = nullptr;
    std::vector<int32_t> buf_;
};

class PyDetokenizer {
public:
    PyDetokenizer(const PyModel& model, bool special) : model_(model.ref()) {
        d_ = edgellm_detokenizer_init(model_->ptr, special);
        if (!d_) throw std::bad_alloc();
    }
    ~PyDetokenizer() { edgellm_detokenizer_free(d_); }
    PyDetokenizer(const PyDetokenizer&) = delete;
    PyDetokenizer& operator=(const PyDetokenizer&) = delete;

    py::str push(int32_t t) {
        return call([&](char* b, size_t n, size_t* out) { return edgellm_detokenizer_push(d_, t, b, n, out); });
    }
    py::str flush() {
        return call([&](char* b, size_t n, size_t* out) { return edgellm_detokenizer_flush(d_, b, n, out); });
    }

private:
    template <typename Fn>
    py::str call(Fn&& fn) {
        size_t n = 0;
        edgellm_status st = fn(buf_, sizeof buf_, &n);
        std::string big;
        const char* p = buf_;
        if (st == EDGELLM_STATUS_BUFFER_TOO_SMALL) {
            big.resize(n);
            st = fn(big.data(), big.size(), &n);
            p = big.data();
        }
        check(st);
        // The core emits whole, valid UTF-8 characters only.
        return py::reinterpret_steal<py::str>(PyUnicode_DecodeUTF8(p, static_cast<Py_ssize_t>(n), "strict"));
    }

    ModelRef model_;
    edgellm_detokenizer* d_ = nullptr;
    char buf_[256];
};

py::object new_error(py::module_& m, const char* name, py::object bases, const char* doc) {
    const std::string full = std::string("edgellm._core.") + name;
    PyObject* t = PyErr_NewExceptionWithDoc(full.c_str(), doc, bases.ptr(), nullptr);
    if (!t) throw py::error_already_set();
    py::object type = py::reinterpret_steal<py::object>(t);
    m.attr(name) = type;
    return type;
}

}  // namespace

void bind_llm(py::module_& m) {
    Errors& e = errors();
    e.base = edgellm_error();
    e.invalid_file = m.attr("GGUFError");
    e.invalid_argument = new_error(m, "InvalidArgumentError",
                                   py::make_tuple(e.base, py::handle(PyExc_ValueError)),
                                   "A parameter out of range, an invalid token id, a prompt that cannot run.");
    e.model_file = new_error(m, "ModelFileError", py::make_tuple(e.base),
                             "The model file is missing or cannot be read.");
    e.unsupported = new_error(m, "UnsupportedError", py::make_tuple(e.base),
                              "An architecture, tensor type or tokenizer edgellm does not run.");
    e.context_full = new_error(m, "ContextFullError", py::make_tuple(e.base),
                               "The tokens do not fit in the context (KV cache); nothing was evaluated.");
    e.state_file = new_error(m, "StateFileError", py::make_tuple(e.base),
                             "A saved session cannot be used: unreadable, corrupt, truncated, or saved for "
                             "another model or context.");

    m.def("version", [] { return std::string(edgellm_version()); });
    m.def("isa", [] { return std::string(edgellm_isa()); }, "The CPU kernels in use: avx512, avx2 or scalar.");
    m.def(
        "set_isa", [](const std::string& name) { check(edgellm_set_isa(name.c_str())); }, py::arg("name"),
        "Use the kernels of one instruction set (avx512, avx2, scalar, or auto) in every context.");

    py::class_<PyModel>(m, "Model")
        .def(py::init<const std::string&, bool>(), py::arg("path"), py::arg("vocab_only") = false)
        .def_property_readonly("arch", [](const PyModel& s) { return std::string(edgellm_model_arch(s.get())); })
        .def_property_readonly("n_vocab", [](const PyModel& s) { return edgellm_model_n_vocab(s.get()); })
        .def_property_readonly("n_ctx_train", [](const PyModel& s) { return edgellm_model_n_ctx_train(s.get()); })
        .def_property_readonly("n_embd", [](const PyModel& s) { return edgellm_model_n_embd(s.get()); })
        .def_property_readonly("n_layer", [](const PyModel& s) { return edgellm_model_n_layer(s.get()); })
        .def_property_readonly("n_params", [](const PyModel& s) { return edgellm_model_n_params(s.get()); })
        .def_property_readonly("size", [](const PyModel& s) { return edgellm_model_size(s.get()); })
        .def_property_readonly("bos", [](const PyModel& s) { return edgellm_model_token_bos(s.get()); })
        .def_property_readonly("eos", [](const PyModel& s) { return edgellm_model_token_eos(s.get()); })
        .def_property_readonly("add_bos", [](const PyModel& s) { return edgellm_model_add_bos(s.get()); })
        .def_property_readonly("add_eos", [](const PyModel& s) { return edgellm_model_add_eos(s.get()); })
        .def("is_eog", [](const PyModel& s, int32_t t) { return edgellm_token_is_eog(s.get(), t); })
        .def("meta_string", &PyModel::meta_string, py::arg("key"))
        .def("tokenize", &PyModel::tokenize, py::arg("text"), py::arg("add_special"), py::arg("parse_special"))
        .def("detokenize", &PyModel::detokenize, py::arg("tokens"), py::arg("special"))
        .def("token_to_piece", &PyModel::token_to_piece, py::arg("token"), py::arg("special"));

    py::class_<PyContext>(m, "Context")
        .def(py::init<const PyModel&, uint32_t, uint32_t, int32_t, int>(), py::arg("model"), py::arg("n_ctx"),
             py::arg("n_batch"), py::arg("n_threads"), py::arg("kv_type") = 0)
        .def_property_readonly("n_ctx", [](const PyContext& c) { return edgellm_context_n_ctx(c.get()); })
        .def_property_readonly("n_past", [](const PyContext& c) { return edgellm_context_n_past(c.get()); })
        .def("eval", &PyContext::eval, py::arg("tokens"), py::arg("logits_all") = false)
        .def("logits", &PyContext::logits)
        .def("truncate", [](PyContext& c, uint32_t n) { check(edgellm_context_truncate(c.get(), n)); })
        .def("prefill", &PyContext::prefill, py::arg("tokens"))
        .def("tokens", &PyContext::tokens)
        .def_property_readonly("n_evaluated", [](const PyContext& c) { return edgellm_context_n_evaluated(c.get()); })
        .def_property_readonly("kv_bytes", [](const PyContext& c) { return edgellm_context_kv_bytes(c.get()); })
        .def("save_state", &PyContext::save_state, py::arg("path"))
        .def("load_state", &PyContext::load_state, py::arg("path"))
        .def("close", &PyContext::close);

    py::class_<PySampler>(m, "Sampler")
        .def(py::init<const PyModel&, float, int32_t, float, float, float, float, float, int32_t, uint64_t>(),
             py::arg("model"), py::arg("temperature"), py::arg("top_k"), py::arg("top_p"), py::arg("min_p"),
             py::arg("repeat_penalty"), py::arg("frequency_penalty"), py::arg("presence_penalty"),
             py::arg("penalty_last_n"), py::arg("seed"))
        .def("sample", &PySampler::sample, py::arg("logits"))
        .def("sample_context", &PySampler::sample_context, py::arg("context"), py::arg("row") = -1)
        .def("accept", &PySampler::accept, py::arg("token"))
        .def("reset", &PySampler::reset);

    const edgellm_spec_params spec = edgellm_spec_default_params();  // the core's defaults, stated once
    py::class_<PySpeculator>(m, "Speculator")
        .def(py::init<py::object, py::object, int32_t, int32_t, float, int32_t, int32_t, int32_t>(), py::arg("target"),
             py::arg("draft"), py::arg("draft_max") = spec.draft_max, py::arg("draft_min") = spec.draft_min,
             py::arg("p_min") = spec.p_min, py::arg("ngram_min") = spec.ngram_min,
             py::arg("ngram_max") = spec.ngram_max, py::arg("draft_vocab") = spec.draft_vocab)
        .def("step", &PySpeculator::step, py::arg("sampler"), py::arg("pending"), py::arg("n_max"))
        .def("stats", &PySpeculator::stats);

    py::class_<PyDetokenizer>(m, "Detokenizer")
        .def(py::init<const PyModel&, bool>(), py::arg("model"), py::arg("special") = false)
        .def("push", &PyDetokenizer::push, py::arg("token"))
        .def("flush", &PyDetokenizer::flush);
}

}  // namespace edgellm_py
