// Python binding of the GGUF reader and writer: _core.GGUFReader, _core.GGUFWriter, _core.GGUFError.
#include <pybind11/numpy.h>
#include <pybind11/stl.h>

#include <cfloat>
#include <cmath>
#include <cstring>
#include <limits>
#include <memory>

#include "bindings.h"
#include "gguf/gguf.h"
#include "gguf/names.h"

namespace py = pybind11;
namespace gguf = edgellm::gguf;
using gguf::ValueType;

namespace edgellm_py {

namespace {

// numpy dtype (little-endian) of a numeric or bool value type.
const char* dtype_name(ValueType t) {
    switch (t) {
        case ValueType::UINT8: return "<u1";
        case ValueType::INT8: return "<i1";
        case ValueType::UINT16: return "<u2";
        case ValueType::INT16: return "<i2";
        case ValueType::UINT32: return "<u4";
        case ValueType::INT32: return "<i4";
        case ValueType::FLOAT32: return "<f4";
        case ValueType::BOOL: return "?";
        case ValueType::UINT64: return "<u8";
        case ValueType::INT64: return "<i8";
        case ValueType::FLOAT64: return "<f8";
        default: return nullptr;
    }
}

py::dtype np_dtype(ValueType t) { return py::dtype::from_args(py::str(dtype_name(t))); }

bool is_integer(ValueType t) {
    switch (t) {
        case ValueType::UINT8: case ValueType::INT8: case ValueType::UINT16: case ValueType::INT16:
        case ValueType::UINT32: case ValueType::INT32: case ValueType::UINT64: case ValueType::INT64:
            return true;
        default:
            return false;
    }
}

bool is_signed(ValueType t) {
    return t == ValueType::INT8 || t == ValueType::INT16 || t == ValueType::INT32 || t == ValueType::INT64;
}

// Inclusive range of an integer type as Python ints.
std::pair<py::int_, py::int_> int_range(ValueType t) {
    size_t bits = gguf::value_type_size(static_cast<uint32_t>(t)) * 8;
    py::int_ one(1);
    py::int_ top = py::reinterpret_steal<py::int_>(PyNumber_Lshift(one.ptr(), py::int_(bits).ptr()));
    if (is_signed(t)) {
        py::int_ half = py::reinterpret_steal<py::int_>(PyNumber_Rshift(top.ptr(), one.ptr()));
        return {py::reinterpret_steal<py::int_>(PyNumber_Negative(half.ptr())), py::int_(half - one)};
    }
    return {py::int_(0), py::int_(top - one)};
}

py::str decode_utf8(const gguf::Reader& r, std::string_view key, const char* p, size_t n) {
    PyObject* s = PyUnicode_DecodeUTF8(p, static_cast<Py_ssize_t>(n), "strict");
    if (!s) {
        PyErr_Clear();
        throw gguf::Error(r.path() + ": key " + gguf::quote(key) + ": string is not valid UTF-8");
    }
    return py::reinterpret_steal<py::str>(s);
}

py::object scalar_value(ValueType t, const uint8_t* p) {
    auto load = [p](auto v) {
        std::memcpy(&v, p, sizeof(v));
        return v;
    };
    switch (t) {
        case ValueType::UINT8: return py::int_(load(uint8_t{}));
        case ValueType::INT8: return py::int_(load(int8_t{}));
        case ValueType::UINT16: return py::int_(load(uint16_t{}));
        case ValueType::INT16: return py::int_(load(int16_t{}));
        case ValueType::UINT32: return py::int_(load(uint32_t{}));
        case ValueType::INT32: return py::int_(load(int32_t{}));
        case ValueType::UINT64: return py::int_(load(uint64_t{}));
        case ValueType::INT64: return py::int_(load(int64_t{}));
        case ValueType::FLOAT32: return py::float_(load(float{}));
        case ValueType::FLOAT64: return py::float_(load(double{}));
        case ValueType::BOOL: return py::bool_(*p != 0);
        default: throw std::logic_error("not a scalar type");
    }
}

py::object kv_value(const gguf::Reader& r, const gguf::KV& kv) {
    if (kv.type == ValueType::STRING)
        return decode_utf8(r, kv.key, reinterpret_cast<const char*>(kv.data), kv.nbytes);
    if (kv.type != ValueType::ARRAY) return scalar_value(kv.type, kv.data);
    if (kv.elem_type == ValueType::STRING) {
        py::list out(kv.strings.size());
        for (size_t i = 0; i < kv.strings.size(); ++i)
            out[i] = decode_utf8(r, kv.key, kv.strings[i].data(), kv.strings[i].size());
        return std::move(out);
    }
    // Numeric arrays are copied: elements inside the header have no alignment guarantee.
    py::array out(np_dtype(kv.elem_type), py::array::ShapeContainer{static_cast<py::ssize_t>(kv.count)});
    if (kv.nbytes) std::memcpy(out.mutable_data(), kv.data, kv.nbytes);
    return std::move(out);
}

std::string path_of(const py::object& path) {
    return py::str(py::module_::import("os").attr("fspath")(path));
}

[[noreturn]] void kv_fail(const gguf::Writer& w, const std::string& key, const std::string& what) {
    throw gguf::Error(w.path() + ": key " + gguf::quote(key) + ": " + what);
}

ValueType checked_type(const gguf::Writer& w, const std::string& key, int type, const char* what) {
    if (type < 0 || type > static_cast<int>(ValueType::FLOAT64))
        kv_fail(w, key, std::string("unknown ") + what + " " + std::to_string(type));
    return static_cast<ValueType>(type);
}

// One Python scalar as the little-endian bytes of `t` (range-checked).
std::vector<uint8_t> scalar_bytes(const gguf::Writer& w, const std::string& key, ValueType t, py::handle v) {
    std::vector<uint8_t> out(gguf::value_type_size(static_cast<uint32_t>(t)));
    if (t == ValueType::BOOL) {
        py::object np_bool = py::module_::import("numpy").attr("bool_");
        if (!py::isinstance<py::bool_>(v) && !py::isinstance(v, np_bool))
            kv_fail(w, key, "expected a bool, got " + std::string(py::str(py::type::of(v).attr("__name__"))));
        out[0] = py::cast<bool>(py::bool_(py::reinterpret_borrow<py::object>(v))) ? 1 : 0;
        return out;
    }
    if (t == ValueType::FLOAT32 || t == ValueType::FLOAT64) {
        double d = PyFloat_AsDouble(v.ptr());
        if (d == -1.0 && PyErr_Occurred()) {
            PyErr_Clear();
            kv_fail(w, key, "expected a number, got " + std::string(py::str(py::type::of(v).attr("__name__"))));
        }
        if (t == ValueType::FLOAT64) {
            std::memcpy(out.data(), &d, 8);
        } else {
            if (std::isfinite(d) && std::fabs(d) > FLT_MAX) kv_fail(w, key, "value " + std::to_string(d) + " overflows float32");
            float f = static_cast<float>(d);
            std::memcpy(out.data(), &f, 4);
        }
        return out;
    }
    PyObject* idx = PyNumber_Index(v.ptr());
    if (!idx) {
        PyErr_Clear();
        kv_fail(w, key, "expected an integer, got " + std::string(py::str(py::type::of(v).attr("__name__"))));
    }
    py::int_ i = py::reinterpret_steal<py::int_>(idx);
    auto [lo, hi] = int_range(t);
    if (i < lo || i > hi)
        kv_fail(w, key, "value " + std::string(py::str(i)) + " is outside the " +
                            gguf::value_type_name(static_cast<uint32_t>(t)) + " range [" + std::string(py::str(lo)) +
                            ", " + std::string(py::str(hi)) + "]");
    if (is_signed(t)) {
        int64_t x = py::cast<int64_t>(i);
        std::memcpy(out.data(), &x, out.size());  // little-endian: the low bytes
    } else {
        uint64_t x = py::cast<uint64_t>(i);
        std::memcpy(out.data(), &x, out.size());
    }
    return out;
}

// A list, tuple or numpy array as a contiguous numpy array of `t` (range- and kind-checked).
py::array numeric_array(const gguf::Writer& w, const std::string& key, ValueType t, py::handle v) {
    py::module_ np = py::module_::import("numpy");
    py::array a = np.attr("asarray")(v);
    if (a.ndim() != 1) kv_fail(w, key, "array values must be 1-D, got " + std::to_string(a.ndim()) + " dims");
    py::dtype target = np_dtype(t);
    if (a.size() == 0) return np.attr("zeros")(0, target);
    char kind = a.dtype().kind();
    std::string kind_s(1, kind);
    if (is_integer(t)) {
        if (kind != 'i' && kind != 'u')
            kv_fail(w, key, "expected integers for an array of " +
                                std::string(gguf::value_type_name(static_cast<uint32_t>(t))) + ", got dtype " +
                                std::string(py::str(a.dtype())));
        auto [lo, hi] = int_range(t);
        py::int_ mn = py::int_(a.attr("min")()), mx = py::int_(a.attr("max")());
        if (mn < lo || mx > hi)
            kv_fail(w, key, "values [" + std::string(py::str(mn)) + ", " + std::string(py::str(mx)) +
                                "] are outside the " + gguf::value_type_name(static_cast<uint32_t>(t)) + " range");
    } else if (t == ValueType::BOOL) {
        if (kind != 'b') kv_fail(w, key, "expected bools, got dtype " + std::string(py::str(a.dtype())));
    } else {
        if (kind != 'i' && kind != 'u' && kind != 'f')
            kv_fail(w, key, "expected numbers, got dtype " + std::string(py::str(a.dtype())));
        if (t == ValueType::FLOAT32) {
            py::array_t<double, py::array::c_style | py::array::forcecast> d(a);
            const double* p = d.data();
            for (py::ssize_t i = 0; i < d.size(); ++i)
                if (std::isfinite(p[i]) && std::fabs(p[i]) > FLT_MAX)
                    kv_fail(w, key, "element " + std::to_string(i) + " overflows float32");
        }
    }
    return np.attr("ascontiguousarray")(a, target);
}

void add_kv(gguf::Writer& w, const std::string& key, int type_id, py::handle value, int elem_id) {
    ValueType t = checked_type(w, key, type_id, "value type");
    if (t == ValueType::STRING) {
        if (py::isinstance<py::bytes>(value)) return w.add_string(key, std::string(py::bytes(py::reinterpret_borrow<py::object>(value))));
        if (!py::isinstance<py::str>(value)) kv_fail(w, key, "expected a str for a string value");
        return w.add_string(key, py::cast<std::string>(value));
    }
    if (t != ValueType::ARRAY) {
        if (elem_id != -1) kv_fail(w, key, "elem_type is only for arrays");
        std::vector<uint8_t> bytes = scalar_bytes(w, key, t, value);
        return w.add_scalar(key, t, bytes.data());
    }
    if (elem_id == -1) kv_fail(w, key, "arrays need elem_type");
    ValueType e = checked_type(w, key, elem_id, "array element type");
    if (e == ValueType::ARRAY) kv_fail(w, key, "nested arrays are not supported");
    if (e == ValueType::STRING) {
        if (py::isinstance<py::str>(value) || py::isinstance<py::bytes>(value))
            kv_fail(w, key, "expected a sequence of str, got a single string");
        std::vector<std::string> strings;
        for (py::handle s : value) {
            if (py::isinstance<py::bytes>(s))
                strings.push_back(std::string(py::bytes(py::reinterpret_borrow<py::object>(s))));
            else if (py::isinstance<py::str>(s))
                strings.push_back(py::cast<std::string>(s));
            else
                kv_fail(w, key, "element " + std::to_string(strings.size()) + " is not a str");
        }
        return w.add_string_array(key, strings);
    }
    if (is_integer(e) && !py::isinstance<py::array>(value)) {
        // Python ints one by one: exact range checks, no detour through a float or object array.
        std::vector<uint8_t> bytes;
        uint64_t n = 0;
        for (py::handle item : value) {
            std::vector<uint8_t> b = scalar_bytes(w, key, e, item);
            bytes.insert(bytes.end(), b.begin(), b.end());
            ++n;
        }
        return w.add_array(key, e, bytes.data(), n);
    }
    py::array a = numeric_array(w, key, e, value);
    w.add_array(key, e, a.data(), static_cast<uint64_t>(a.size()));
}

// A C-contiguous buffer held for the duration of a call.
struct Buffer {
    Py_buffer view{};
    explicit Buffer(py::handle obj) {
        if (PyObject_GetBuffer(obj.ptr(), &view, PyBUF_C_CONTIGUOUS) != 0) {
            PyErr_Clear();
            throw py::value_error("tensor data must be a C-contiguous buffer (bytes, numpy array, memoryview)");
        }
    }
    ~Buffer() { PyBuffer_Release(&view); }
    Buffer(const Buffer&) = delete;
    Buffer& operator=(const Buffer&) = delete;
};

}  // namespace

void bind_gguf(py::module_& m) {
    py::register_exception<gguf::Error>(m, "GGUFError", edgellm_error());

    using Reader = gguf::Reader;
    py::class_<Reader, std::shared_ptr<Reader>>(m, "GGUFReader",
                                                "A GGUF file mapped read-only; the header is fully validated on open.")
        .def(py::init([](const py::object& path) {
                 std::string p = path_of(path);
                 py::gil_scoped_release release;
                 return std::make_shared<Reader>(p);
             }),
             py::arg("path"))
        .def_property_readonly("path", &Reader::path)
        .def_property_readonly("version", &Reader::version)
        .def_property_readonly("alignment", &Reader::alignment)
        .def_property_readonly("data_offset", &Reader::data_offset)
        .def_property_readonly("file_size", &Reader::file_size)
        .def("keys",
             [](const Reader& r) {
                 py::list out;
                 for (const gguf::KV& kv : r.kvs()) out.append(py::str(kv.key.data(), kv.key.size()));
                 return out;
             },
             "Metadata keys in file order.")
        .def("__contains__", [](const Reader& r, const std::string& key) { return r.find(key) != nullptr; })
        .def("__len__", [](const Reader& r) { return r.kvs().size(); })
        .def("get",
             [](const Reader& r, const std::string& key) {
                 const gguf::KV* kv = r.find(key);
                 if (!kv) throw py::key_error(key);
                 return kv_value(r, *kv);
             },
             py::arg("key"),
             "Value of a key: int, float, bool, str; list[str] for string arrays; a numpy array for numeric "
             "arrays. KeyError when absent.")
        .def("value_type",
             [](const Reader& r, const std::string& key) {
                 const gguf::KV* kv = r.find(key);
                 if (!kv) throw py::key_error(key);
                 py::object elem = py::none();
                 if (kv->type == ValueType::ARRAY) elem = py::int_(static_cast<uint32_t>(kv->elem_type));
                 return py::make_tuple(static_cast<uint32_t>(kv->type), elem);
             },
             py::arg("key"), "(value type, element type or None)")
        .def("tensors",
             [](const Reader& r) {
                 py::list out;
                 for (const gguf::TensorInfo& t : r.tensors()) {
                     py::list ne;
                     for (uint32_t d = 0; d < t.n_dims; ++d) ne.append(t.ne[d]);
                     out.append(py::make_tuple(py::str(t.name.data(), t.name.size()), static_cast<uint32_t>(t.type),
                                               ne, r.data_offset() + t.offset, t.nbytes));
                 }
                 return out;
             },
             "[(name, type id, ne in GGUF order, absolute file offset, nbytes)] in file order.")
        .def("tensor_data",
             [](py::object self, const std::string& name) {
                 const Reader& r = self.cast<const Reader&>();
                 const gguf::TensorInfo* t = r.find_tensor(name);
                 if (!t) throw py::key_error(name);
                 // A read-only view into the map; `self` is its base, so the map outlives the array.
                 py::array a(py::dtype::of<uint8_t>(), py::array::ShapeContainer{static_cast<py::ssize_t>(t->nbytes)},
                             py::array::StridesContainer{py::ssize_t{1}},
                             r.tensor_data(*t), self);
                 py::detail::array_proxy(a.ptr())->flags &= ~py::detail::npy_api::NPY_ARRAY_WRITEABLE_;
                 return a;
             },
             py::arg("name"), "The tensor's bytes: a read-only zero-copy uint8 view into the map.");

    using Writer = gguf::Writer;
    py::class_<Writer>(m, "GGUFWriter",
                       "Streams a GGUF v3 file through a temporary file renamed into place by finish(). "
                       "Used as a context manager, __exit__ aborts (removes the temporary file) unless finish() "
                       "was called. One thread at a time.")
        .def(py::init([](const py::object& path, uint32_t alignment) {
                 return std::make_unique<Writer>(path_of(path), alignment);
             }),
             py::arg("path"), py::arg("alignment") = gguf::kDefaultAlignment)
        .def_property_readonly("path", &Writer::path)
        .def_property_readonly("temp_path", &Writer::temp_path)
        .def_property_readonly("alignment", &Writer::alignment)
        .def_property_readonly("finished", &Writer::finished)
        .def("add_kv", &add_kv, py::arg("key"), py::arg("value_type"), py::arg("value"), py::arg("elem_type") = -1,
             "Add one metadata entry; integers are range-checked; arrays need elem_type.")
        .def("add_tensor_info",
             [](Writer& w, const std::string& name, const std::vector<int64_t>& ne, uint32_t type) {
                 w.add_tensor_info(name, ne, static_cast<edgellm::quant::Type>(type));
             },
             py::arg("name"), py::arg("ne"), py::arg("type"), "ne in GGUF order (ne[0] innermost).")
        .def("tensor_nbytes", &Writer::tensor_nbytes, py::arg("name"))
        .def("write_header", [](Writer& w) {
            py::gil_scoped_release release;
            w.write_header();
        })
        .def("write_tensor_data",
             [](Writer& w, const std::string& name, py::handle data) {
                 Buffer buf(data);
                 py::gil_scoped_release release;
                 w.write_tensor_data(name, buf.view.buf, static_cast<uint64_t>(buf.view.len));
             },
             py::arg("name"), py::arg("data"), "Bytes of the next declared tensor (any C-contiguous buffer).")
        .def("finish", [](Writer& w) {
            py::gil_scoped_release release;
            w.finish();
        })
        .def("abort", &Writer::abort)
        .def("__enter__", [](py::object self) { return self; })
        .def("__exit__", [](Writer& w, py::handle, py::handle, py::handle) {
            if (!w.finished()) w.abort();
            return false;
        });
}

}  // namespace edgellm_py
