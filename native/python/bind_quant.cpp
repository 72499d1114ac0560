// Python bindings of the block formats: type traits, row sizes, quantize, dequantize.
#include <pybind11/numpy.h>
#include <pybind11/stl.h>

#include <memory>
#include <optional>
#include <string>

#include "bindings.h"
#include "common/error.h"
#include "common/thread_pool.h"
#include "ops/matmul.h"
#include "quant/quant.h"

namespace py = pybind11;
namespace q = edgellm::quant;

namespace edgellm_py {

namespace {

const q::Traits& traits_or_raise(int64_t type) {
    const q::Traits* t = type >= 0 && type <= 0xffffffffLL ? q::traits(static_cast<uint32_t>(type)) : nullptr;
    if (!t) throw py::value_error("unknown tensor type id " + std::to_string(type));
    return *t;
}

// Type id for the core, which raises edgellm::Error (EdgeLLMError) on ids it does not know.
q::Type to_type(int64_t type) {
    if (type < 0 || type > 0xffffffffLL) throw edgellm::Error("unknown tensor type id " + std::to_string(type));
    return static_cast<q::Type>(type);
}

using F32Array = py::array_t<float, py::array::c_style>;

py::array_t<uint8_t> quantize(const F32Array& src, int64_t type, const std::optional<F32Array>& imatrix, int n_threads) {
    if (src.ndim() != 2) throw py::value_error("quantize expects a 2-D (nrows, n_per_row) float32 array");
    const int64_t nrows = src.shape(0), n_per_row = src.shape(1);
    const q::Type qtype = to_type(type);
    const size_t rs = q::row_size(qtype, n_per_row);
    const float* im = nullptr;
    if (imatrix) {
        if (imatrix->ndim() != 1 || imatrix->shape(0) != n_per_row)
            throw py::value_error("imatrix must be a 1-D float32 array of length " + std::to_string(n_per_row) +
                                  " (one weight per column)");
        im = imatrix->data();
    }
    py::array_t<uint8_t> out({static_cast<py::ssize_t>(nrows), static_cast<py::ssize_t>(rs)});
    const float* in = src.data();
    uint8_t* dst = out.mutable_data();
    {
        py::gil_scoped_release release;
        q::quantize(qtype, in, dst, nrows, n_per_row, im, n_threads);
    }
    return out;
}

py::array_t<float> dequantize(const py::array& data, int64_t type, int64_t n_per_row, int n_threads) {
    if (data.dtype().itemsize() != 1)
        throw py::value_error("dequantize expects a uint8 array of packed blocks");
    if (!(data.flags() & py::array::c_style)) throw py::value_error("dequantize expects a C-contiguous array");
    const q::Type qtype = to_type(type);
    const size_t rs = q::row_size(qtype, n_per_row);
    const size_t nbytes = static_cast<size_t>(data.nbytes());
    if (rs == 0 || nbytes % rs != 0)
        throw py::value_error("data holds " + std::to_string(nbytes) + " bytes, not a whole number of rows of " +
                              std::to_string(rs) + " bytes (" + std::to_string(n_per_row) + " elements)");
    const int64_t nrows = static_cast<int64_t>(nbytes / rs);
    py::array_t<float> out({static_cast<py::ssize_t>(nrows), static_cast<py::ssize_t>(n_per_row)});
    const void* in = data.data();
    float* dst = out.mutable_data();
    {
        py::gil_scoped_release release;
        q::dequantize(qtype, in, dst, nrows, n_per_row, n_threads);
    }
    return out;
}

// Rows packed in a GGUF block format, multiplied by float vectors with the model's matmul kernels and a
// thread pool of its own: the RAG searcher scores a query against every stored embedding with it.
class RowMatrix {
public:
    RowMatrix(py::array data, int64_t type, int64_t k, int n_threads)
        : data_(std::move(data)), type_(to_type(type)), k_(k), pool_(std::make_unique<edgellm::ThreadPool>(n_threads)) {
        if (!edgellm::ops::supports(type_))
            throw edgellm::Error(std::string("RowMatrix: tensor type ") + q::traits(static_cast<uint32_t>(type_))->name +
                                 " has no matmul kernel");
        if (data_.dtype().itemsize() != 1 || !(data_.flags() & py::array::c_style))
            throw py::value_error("RowMatrix expects a C-contiguous uint8 array of packed rows");
        const size_t rs = q::row_size(type_, k_);
        const size_t nbytes = static_cast<size_t>(data_.nbytes());
        if (k_ <= 0 || rs == 0 || nbytes % rs != 0)
            throw py::value_error("RowMatrix: " + std::to_string(nbytes) + " bytes are not whole rows of " +
                                  std::to_string(k_) + " elements");
        rows_ = static_cast<int64_t>(nbytes / rs);
        // quantized rows are repacked for the integer kernels once, not on every product
        packed_ = edgellm::ops::pack(static_cast<const uint8_t*>(data_.data()), type_, rows_, k_, pool_.get());
    }

    int64_t rows() const { return rows_; }
    int64_t k() const { return k_; }

    // x: (n, k) or (k,) float32 -> (n, rows) or (rows,) float32 = x W^T
    py::array_t<float> matmul(const F32Array& x) {
        if ((x.ndim() != 1 && x.ndim() != 2) || x.shape(x.ndim() - 1) != k_)
            throw py::value_error("RowMatrix.matmul expects float32 of shape (k,) or (n, k) with k = " +
                                  std::to_string(k_));
        const int64_t n = x.ndim() == 2 ? x.shape(0) : 1;
        py::array_t<float> y = x.ndim() == 2 ? py::array_t<float>({static_cast<py::ssize_t>(n), static_cast<py::ssize_t>(rows_)})
                                             : py::array_t<float>(static_cast<py::ssize_t>(rows_));
        if (n == 0 || rows_ == 0) return y;
        const auto* w = static_cast<const uint8_t*>(data_.data());
        const float* in = x.data();
        float* out = y.mutable_data();
        {
            py::gil_scoped_release release;
            if (packed_)
                edgellm::ops::matmul(*packed_, in, n, out, *pool_);
            else
                edgellm::ops::matmul(w, type_, rows_, k_, in, n, out, *pool_);
        }
        return y;
    }

private:
    py::array data_;
    q::Type type_;
    int64_t k_;
    int64_t rows_ = 0;
    std::unique_ptr<edgellm::ThreadPool> pool_;
    std::unique_ptr<edgellm::ops::Packed> packed_;  // quantized types
};

}  // namespace

void bind_quant(py::module_& m) {
    py::class_<RowMatrix>(m, "RowMatrix",
                          "Rows packed in a GGUF block format (uint8, row_size(type, k) bytes each), multiplied "
                          "by float32 vectors with the core's matmul kernels on a pool of n_threads (0 = all "
                          "cores).")
        .def(py::init<py::array, int64_t, int64_t, int>(), py::arg("data"), py::arg("type"), py::arg("k"),
             py::arg("n_threads") = 0)
        .def_property_readonly("rows", &RowMatrix::rows)
        .def_property_readonly("k", &RowMatrix::k)
        .def("matmul", &RowMatrix::matmul, py::arg("x"), "x (k,) or (n, k) float32 -> x W^T: (rows,) or (n, rows).");
    m.def(
        "type_traits",
        [](int64_t type) {
            const q::Traits& t = traits_or_raise(type);
            return py::make_tuple(t.name, t.block_size, t.type_size);
        },
        py::arg("type"), "(name, block_size, type_size) of a GGUF tensor type id.");
    m.def(
        "row_size",
        [](int64_t type, int64_t n_per_row) { return q::row_size(to_type(type), n_per_row); },
        py::arg("type"), py::arg("n_per_row"), "Bytes of one row of n_per_row elements.");
    m.def("quantize", &quantize, py::arg("src"), py::arg("type"), py::arg("imatrix") = py::none(),
          py::arg("n_threads") = 0,
          "Quantize a (nrows, n_per_row) float32 array; returns uint8 (nrows, row_size).");
    m.def("dequantize", &dequantize, py::arg("data"), py::arg("type"), py::arg("n_per_row"), py::arg("n_threads") = 0,
          "Dequantize packed rows (uint8, contiguous) to float32 (nrows, n_per_row).");
}

}  // namespace edgellm_py
