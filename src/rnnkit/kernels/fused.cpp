// Fused CPU forward and backward passes for one recurrent layer and direction.
//
// The ops run a whole packed, time-major sequence in one call. The input
// projection of every step is one matrix product. Each step is then one
// recurrent product followed by one pass of gate arithmetic over the rows
// active at that step. The layout and equations are those of
// rnnkit/kernels/reference.py and rnnkit/cells.py.
//
// Shapes: N packed rows, B batch, I input features, H hidden, P projection,
// H_out = P with a projection, else H. G gates (1, 3 or 4).
//   input (N, I), h0 (B, H_out), c0 (B, H), w_ih (G*H, I), w_hh (G*H, H_out),
//   b_ih and b_hh (G*H), w_hr (P, H).
// The forward op also returns a workspace of gate activations that the
// backward op reads: LSTM (N, 5H) = [i, f, g, o, c], GRU (N, 4H) =
// [r, z, n, W_hn h + b_hn], and (0,) for the Elman RNN, whose backward needs
// only its outputs.

#include <ATen/Dispatch.h>
#include <ATen/Parallel.h>
#include <ATen/core/Tensor.h>
#include <ATen/ops/addmm.h>
#include <ATen/ops/empty.h>
#include <ATen/ops/empty_like.h>
#include <ATen/ops/mm.h>
#include <ATen/ops/sum.h>
#include <ATen/ops/zeros.h>
#include <ATen/ops/zeros_like.h>
#include <torch/library.h>

#include <algorithm>
#include <cmath>
#include <cstdint>
#include <cstring>
#include <tuple>
#include <vector>

namespace {

using at::Tensor;

enum class Mode { kTanh, kRelu, kLstm, kGru };

Mode parse_mode(c10::string_view name) {
  if (name == "RNN_TANH") return Mode::kTanh;
  if (name == "RNN_RELU") return Mode::kRelu;
  if (name == "LSTM") return Mode::kLstm;
  if (name == "GRU") return Mode::kGru;
  TORCH_CHECK(false, "unknown recurrent mode '", std::string(name.data(), name.size()),
              "'; expected LSTM, GRU, RNN_TANH or RNN_RELU");
  return Mode::kTanh;  // not reached: TORCH_CHECK(false, ...) throws
}

int64_t gate_count(Mode mode) {
  switch (mode) {
    case Mode::kLstm: return 4;
    case Mode::kGru: return 3;
    default: return 1;
  }
}

// Activations written without branches, so that the compiler vectorises the
// gate loops that call them. For float, exp follows the Cephes expf scheme:
// x = k ln2 + r with |r| <= ln2 / 2, a degree-7 polynomial for exp(r), and
// 2^k built from its exponent bits; its relative error is about 1e-7. Double
// keeps the C library functions, because it is used for checking, not speed.
template <typename T>
struct Math;

template <>
struct Math<float> {
  static inline __attribute__((always_inline)) float exp(float x) {
    x = x < -87.0f ? -87.0f : x;
    x = x > 88.0f ? 88.0f : x;
    const float k = std::floor(x * 1.44269504088896341f + 0.5f);
    float r = x - k * 0.693359375f;
    r = r + k * 2.12194440e-4f;
    float p = 1.9875691500e-4f;
    p = p * r + 1.3981999507e-3f;
    p = p * r + 8.3334519073e-3f;
    p = p * r + 4.1665795894e-2f;
    p = p * r + 1.6666665459e-1f;
    p = p * r + 5.0000001201e-1f;
    const float y = p * r * r + r + 1.0f;
    const int32_t bits = (static_cast<int32_t>(k) + 127) << 23;
    float scale;
    std::memcpy(&scale, &bits, sizeof(scale));
    return y * scale;
  }
  static inline __attribute__((always_inline)) float sigmoid(float x) { return 1.0f / (1.0f + exp(-x)); }
  static inline __attribute__((always_inline)) float tanh(float x) { return 2.0f / (1.0f + exp(-2.0f * x)) - 1.0f; }
};

template <>
struct Math<double> {
  static inline __attribute__((always_inline)) double sigmoid(double x) { return 1.0 / (1.0 + std::exp(-x)); }
  static inline __attribute__((always_inline)) double tanh(double x) { return std::tanh(x); }
};

// Rows of step t are rows offsets[t] .. offsets[t] + sizes[t] of the packed
// data, a prefix of the batch.
struct Steps {
  std::vector<int64_t> sizes;
  std::vector<int64_t> offsets;
  int64_t count = 0;

  Steps(at::IntArrayRef batch_sizes, int64_t rows, int64_t batch) {
    count = static_cast<int64_t>(batch_sizes.size());
    int64_t offset = 0;
    int64_t previous = batch;
    for (int64_t t = 0; t < count; ++t) {
      const int64_t size = batch_sizes[t];
      TORCH_CHECK(size > 0 && size <= previous,
                  "expected batch_sizes to be positive, non-increasing and at most "
                  "the batch size ", batch, ", got ", size, " at step ", t);
      sizes.push_back(size);
      offsets.push_back(offset);
      offset += size;
      previous = size;
    }
    TORCH_CHECK(offset == rows, "expected batch_sizes to add up to the ", rows,
                " rows of the input, got ", offset);
  }

  // The packed row holding the state that row b of step t starts from, or -1
  // when it starts from the initial state. The step before t in the
  // direction of travel is t - 1 forward and t + 1 in reverse.
  int64_t previous_row(int64_t t, int64_t b, bool reverse) const {
    const int64_t before = reverse ? t + 1 : t - 1;
    if (before < 0 || before >= count || b >= sizes[before]) return -1;
    return offsets[before] + b;
  }
};

// Small and medium products run on a register-blocked GEMM written here,
// not on at::mm. At these sizes (a few rows, tens to hundreds of columns)
// MKL's call overhead and thread start-up cost more than the arithmetic.
// Under load, one descheduled MKL thread also stalls the whole product.
// NOTE: the thresholds below come from measurements on one 2-core AVX-512
// AMD machine (torch 2.13 with MKL); other CPUs may prefer other values.

// From this many multiply-adds up, this GEMM splits its columns across
// torch's intra-op threads.
constexpr int64_t kParallelProduct = 4 * 1024 * 1024;
// Forward steps always run on this GEMM: on two threads it reached 110G to
// 115G multiply-adds per second for (64 x 256) @ (256 x 1024) and larger step
// products, against 65G to 80G for at::mm (MKL). A backward step product of
// at least this many multiply-adds still goes to at::mm. NOTE: on this GEMM,
// whose sums run along K in one chain, a float32 weight gradient at
// 48 x 300 x 300 differed from the reference path by 1.5e-5, just past the
// 1e-5 that the tests allow.
constexpr int64_t kStepLibraryProduct = 4 * 1024 * 1024;
// An LSTM step from this many multiply-adds up splits its hidden units across
// threads, in slices of at least kSplitUnits units. Smaller steps stay on one
// thread, because waking the second thread for every step cost more than it
// saved at (32 x 64) @ (64 x 256).
constexpr int64_t kSplitStep = 4 * 1024 * 1024;
constexpr int64_t kSplitUnits = 16;
// One-off products (input projection, input and weight gradients) above this
// many multiply-adds go to at::mm, whose packed GEMM is faster there, unless
// they are products a @ w with an inner dimension of at least kOwnDepth. For
// those, this GEMM on two threads measured 105G to 110G multiply-adds per
// second against 72G to 99G for at::mm (MKL), e.g. (6400 x 128) @ (128 x 1024).
constexpr int64_t kLibraryProduct = 8 * 1024 * 1024;
constexpr int64_t kOwnDepth = 128;

#if defined(__AVX512F__)
constexpr int kVectorBytes = 64;
#else
constexpr int kVectorBytes = 32;
#endif

template <typename T>
struct Vector;
template <>
struct Vector<float> {
  typedef float Type __attribute__((vector_size(kVectorBytes)));
  static constexpr int64_t kLanes = kVectorBytes / sizeof(float);
};
template <>
struct Vector<double> {
  typedef double Type __attribute__((vector_size(kVectorBytes)));
  static constexpr int64_t kLanes = kVectorBytes / sizeof(double);
};

template <typename V, typename T>
inline __attribute__((always_inline)) V load_vector(const T* source) {
  V value;
  std::memcpy(&value, source, sizeof(V));
  return value;
}

template <typename V, typename T>
inline __attribute__((always_inline)) void store_vector(T* target, const V& value) {
  std::memcpy(target, &value, sizeof(V));
}

// A view of a matrix by its element strides, so that one GEMM serves both
// a @ w and a^T @ b (the weight gradients) without a transposed copy.
template <typename T>
struct Strided {
  const T* data;
  int64_t row_stride, column_stride;
  const T& at(int64_t row, int64_t column) const {
    return data[row * row_stride + column * column_stride];
  }
};

// out[R rows, V vectors of columns] (+)= a[R rows, :K] @ w[:K, the columns],
// with the R x V accumulators in registers.
template <typename T, int R, int V>
inline __attribute__((always_inline)) void gemm_block(Strided<T> a, int64_t K, const T* w,
                                                      int64_t ldw, T* out, int64_t ldo,
                                                      bool accumulate) {
  using Vec = typename Vector<T>::Type;
  constexpr int64_t L = Vector<T>::kLanes;
  Vec sums[R][V];
  for (int r = 0; r < R; ++r) {
    for (int v = 0; v < V; ++v) {
      sums[r][v] = accumulate ? load_vector<Vec>(out + r * ldo + v * L) : Vec{};
    }
  }
  for (int64_t k = 0; k < K; ++k) {
    Vec w_k[V];
    for (int v = 0; v < V; ++v) w_k[v] = load_vector<Vec>(w + k * ldw + v * L);
    for (int r = 0; r < R; ++r) {
      const T value = a.at(r, k);
      for (int v = 0; v < V; ++v) sums[r][v] += value * w_k[v];
    }
  }
  for (int r = 0; r < R; ++r) {
    for (int v = 0; v < V; ++v) store_vector(out + r * ldo + v * L, sums[r][v]);
  }
}

// Columns [column, column + V * lanes) of every row, four rows at a time.
template <typename T, int V>
void gemm_columns(Strided<T> a, int64_t rows, int64_t K, const T* w, int64_t ldw,
                  T* out, int64_t ldo, bool accumulate) {
  int64_t r = 0;
  for (; r + 4 <= rows; r += 4) {
    const Strided<T> block{&a.at(r, 0), a.row_stride, a.column_stride};
    gemm_block<T, 4, V>(block, K, w, ldw, out + r * ldo, ldo, accumulate);
  }
  for (; r < rows; ++r) {
    const Strided<T> block{&a.at(r, 0), a.row_stride, a.column_stride};
    gemm_block<T, 1, V>(block, K, w, ldw, out + r * ldo, ldo, accumulate);
  }
}

// out[:, begin:end] (+)= a @ w[:, begin:end] for a (rows, K) and w (K, M) with
// unit column stride; begin is a multiple of the vector width.
template <typename T>
void gemm_range(Strided<T> a, int64_t rows, int64_t K, const T* w, int64_t ldw, T* out,
                int64_t ldo, bool accumulate, int64_t begin, int64_t end) {
  // Many rows (an input projection) go in chunks, so that a chunk of a stays
  // in cache while it meets every column.
  constexpr int64_t kRowChunk = 64;
  if (rows > kRowChunk) {
    for (int64_t r = 0; r < rows; r += kRowChunk) {
      const Strided<T> chunk{&a.at(r, 0), a.row_stride, a.column_stride};
      gemm_range<T>(chunk, std::min(kRowChunk, rows - r), K, w, ldw, out + r * ldo, ldo,
                    accumulate, begin, end);
    }
    return;
  }
  constexpr int64_t L = Vector<T>::kLanes;
  int64_t j = begin;
  for (; j + 4 * L <= end; j += 4 * L) {
    gemm_columns<T, 4>(a, rows, K, w + j, ldw, out + j, ldo, accumulate);
  }
  if (j + 2 * L <= end) {
    gemm_columns<T, 2>(a, rows, K, w + j, ldw, out + j, ldo, accumulate);
    j += 2 * L;
  }
  for (; j + L <= end; j += L) {
    gemm_columns<T, 1>(a, rows, K, w + j, ldw, out + j, ldo, accumulate);
  }
  for (; j < end; ++j) {
    for (int64_t r = 0; r < rows; ++r) {
      T sum = accumulate ? out[r * ldo + j] : T(0);
      for (int64_t k = 0; k < K; ++k) sum += a.at(r, k) * w[k * ldw + j];
      out[r * ldo + j] = sum;
    }
  }
}

template <typename T>
void gemm(Strided<T> a, int64_t rows, int64_t K, const T* w, int64_t ldw, int64_t M,
          T* out, int64_t ldo, bool accumulate) {
  if (rows == 0 || M == 0) return;
  constexpr int64_t L = Vector<T>::kLanes;
  const int64_t work = rows * K * M;
  if (work < kParallelProduct || at::get_num_threads() == 1) {
    gemm_range<T>(a, rows, K, w, ldw, out, ldo, accumulate, 0, M);
    return;
  }
  // Chunks of four vectors of columns, so each thread runs full blocks.
  const int64_t chunk = 4 * L;
  const int64_t chunks = (M + chunk - 1) / chunk;
  at::parallel_for(0, chunks, 1, [&](int64_t first, int64_t last) {
    gemm_range<T>(a, rows, K, w, ldw, out, ldo, accumulate, first * chunk,
                  std::min(M, last * chunk));
  });
}

// out (+)= a @ w with a (rows, K) and w (K, M) given as tensor views; w_rows is
// the contiguous (K, M) copy that the hand-written GEMM reads.
template <typename T>
void matmul(const Tensor& a, const Tensor& w, const Tensor& w_rows, Tensor out,
            bool accumulate) {
  const int64_t rows = a.size(0), K = a.size(1), M = w.size(1);
  if (rows == 0) return;
  if ((rows * K * M <= kLibraryProduct || K >= kOwnDepth) && out.stride(1) == 1) {
    gemm<T>({a.const_data_ptr<T>(), a.stride(0), a.stride(1)}, rows, K,
            w_rows.const_data_ptr<T>(), M, M, out.mutable_data_ptr<T>(), out.stride(0),
            accumulate);
  } else if (accumulate) {
    out.addmm_(a, w);
  } else {
    at::mm_out(out, a, w);
  }
}

// The product of one step: rows [a_row, a_row + rows) of a times w (K, M),
// given as its contiguous copy w_rows, into rows [out_row, ...) of out. It
// reads the data pointers directly, so a step creates no tensor views. With
// library false, the product never goes to at::mm.
template <typename T>
void matmul_rows(const Tensor& a, int64_t a_row, int64_t rows, const Tensor& w_rows,
                 Tensor& out, int64_t out_row, bool accumulate, bool library = true) {
  const int64_t K = a.size(1), M = w_rows.size(1);
  if (rows == 0) return;
  if (library && rows * K * M >= kStepLibraryProduct) {
    Tensor target = out.narrow(0, out_row, rows);
    if (accumulate) {
      target.addmm_(a.narrow(0, a_row, rows), w_rows);
    } else {
      at::mm_out(target, a.narrow(0, a_row, rows), w_rows);
    }
    return;
  }
  gemm<T>({a.const_data_ptr<T>() + a_row * a.stride(0), a.stride(0), a.stride(1)}, rows,
          K, w_rows.const_data_ptr<T>(), M, M,
          out.mutable_data_ptr<T>() + out_row * out.stride(0), out.stride(0), accumulate);
}

// out (+)= a^T @ b with a (N, K) and b (N, M): the weight gradients, summed
// over packed rows. out must be contiguous.
template <typename T>
void matmul_transposed(const Tensor& a, const Tensor& b, Tensor out, bool accumulate) {
  const int64_t rows = a.size(0), K = a.size(1), M = b.size(1);
  if (rows * K * M > kLibraryProduct || b.stride(1) != 1 || !out.is_contiguous()) {
    if (accumulate) {
      out.addmm_(a.t(), b);
    } else {
      at::mm_out(out, a.t(), b);
    }
    return;
  }
  if (M >= K || a.stride(1) != 1) {
    // Row k of a^T is column k of a.
    gemm<T>({a.const_data_ptr<T>(), a.stride(1), a.stride(0)}, K, rows,
            b.const_data_ptr<T>(), b.stride(0), M, out.mutable_data_ptr<T>(), M,
            accumulate);
    return;
  }
  // With b narrower than a (a weight gradient with few input features), the
  // vectors run along the wider a: b^T @ a goes to a scratch (M, K) that is
  // then added to out transposed.
  std::vector<T> scratch(M * K);
  gemm<T>({b.const_data_ptr<T>(), b.stride(1), b.stride(0)}, M, rows,
          a.const_data_ptr<T>(), a.stride(0), K, scratch.data(), K, false);
  T* o = out.mutable_data_ptr<T>();
  for (int64_t k = 0; k < K; ++k) {
    for (int64_t m = 0; m < M; ++m) {
      o[k * M + m] = (accumulate ? o[k * M + m] : T(0)) + scratch[m * K + k];
    }
  }
}

// Run fn(begin, end) over rows, split across torch's intra-op threads when the
// step has enough elements to pay for it.
template <typename Fn>
void for_rows(int64_t rows, int64_t row_elements, const Fn& fn) {
  const int64_t grain = std::max<int64_t>(1, 16384 / std::max<int64_t>(1, row_elements));
  at::parallel_for(0, rows, grain, fn);
}

// Forward gate arithmetic of one row. xg and hg contain the input and
// recurrent pre-activations of the row, and act receives the gate activations
// (a workspace row, or a scratch row when nothing is saved). The rows are not inlined,
// because GCC 12 vectorises these loops only when it compiles them alone.

// The Elman RNN's input projection is computed into its output rows, which
// saves a buffer: out contains the input pre-activation on entry.
template <typename T>
__attribute__((noinline)) void rnn_row(Mode mode, int64_t H, const T* __restrict hg, T* __restrict h,
                    T* __restrict out) {
  if (mode == Mode::kTanh) {
    for (int64_t j = 0; j < H; ++j) {
      const T value = Math<T>::tanh(out[j] + hg[j]);
      h[j] = value;
      out[j] = value;
    }
  } else {
    for (int64_t j = 0; j < H; ++j) {
      const T pre = out[j] + hg[j];
      const T value = pre > T(0) ? pre : T(0);
      h[j] = value;
      out[j] = value;
    }
  }
}

template <typename T, bool kSave>
__attribute__((noinline)) void lstm_row(int64_t H, int64_t units, const T* __restrict xg,
                                        const T* __restrict hg, T* __restrict act,
                                        T* __restrict c, T* __restrict h,
                                        T* __restrict out) {
  for (int64_t j = 0; j < units; ++j) {
    const T i = Math<T>::sigmoid(xg[j] + hg[j]);
    const T f = Math<T>::sigmoid(xg[H + j] + hg[H + j]);
    const T g = Math<T>::tanh(xg[2 * H + j] + hg[2 * H + j]);
    const T o = Math<T>::sigmoid(xg[3 * H + j] + hg[3 * H + j]);
    const T c_next = f * c[j] + i * g;
    const T h_next = o * Math<T>::tanh(c_next);
    act[j] = i;
    act[H + j] = f;
    act[2 * H + j] = g;
    act[3 * H + j] = o;
    if (kSave) act[4 * H + j] = c_next;
    c[j] = c_next;
    h[j] = h_next;
    if (out != nullptr) out[j] = h_next;
  }
}

template <typename T, bool kSave>
__attribute__((noinline)) void gru_row(int64_t H, const T* __restrict xg,
                                       const T* __restrict hg, const T* __restrict b_hn,
                                       T* __restrict act, T* __restrict h,
                                       T* __restrict out) {
  for (int64_t j = 0; j < H; ++j) {
    const T r = Math<T>::sigmoid(xg[j] + hg[j]);
    const T z = Math<T>::sigmoid(xg[H + j] + hg[H + j]);
    const T hn = hg[2 * H + j] + (b_hn != nullptr ? b_hn[j] : T(0));
    const T n = Math<T>::tanh(xg[2 * H + j] + r * hn);
    const T h_next = (T(1) - z) * n + z * h[j];
    act[j] = r;
    act[H + j] = z;
    act[2 * H + j] = n;
    if (kSave) act[3 * H + j] = hn;
    h[j] = h_next;
    out[j] = h_next;
  }
}

// The transpose of a contiguous matrix, as a new contiguous one.
template <typename T>
Tensor transposed(const Tensor& matrix) {
  const int64_t rows = matrix.size(0), columns = matrix.size(1);
  if (rows * columns > 64 * 1024) return matrix.t().contiguous();
  Tensor result = at::empty({columns, rows}, matrix.options());
  const T* source = matrix.const_data_ptr<T>();
  T* target = result.mutable_data_ptr<T>();
  for (int64_t r = 0; r < rows; ++r) {
    for (int64_t c = 0; c < columns; ++c) target[c * rows + r] = source[r * columns + c];
  }
  return result;
}

// A contiguous copy of a contiguous tensor.
template <typename T>
Tensor copied(const Tensor& tensor) {
  Tensor result = at::empty(tensor.sizes(), tensor.options());
  if (tensor.numel() > 0) {
    std::memcpy(result.mutable_data_ptr<T>(), tensor.const_data_ptr<T>(),
                tensor.numel() * sizeof(T));
  }
  return result;
}

struct Weights {
  Tensor w_ih, w_hh, b_ih, b_hh, w_hr;  // b_ih, b_hh, w_hr may be undefined
};

template <typename T>
std::tuple<Tensor, Tensor, Tensor, Tensor> forward_impl(
    Mode mode, const Tensor& x, const Tensor& h0, const Tensor& c0, const Weights& w,
    const Steps& steps, bool reverse, bool train) {
  const int64_t G = gate_count(mode);
  const int64_t GH = w.w_hh.size(0), H = GH / G, H_out = w.w_hh.size(1);
  const int64_t N = x.size(0), B = h0.size(0);
  const bool lstm = mode == Mode::kLstm, gru = mode == Mode::kGru;
  const bool projected = w.w_hr.defined();

  // The input projection of every step, with every bias that adds to it
  // folded in. The GRU keeps b_hn apart, because r multiplies it.
  // The small tensors here are filled with plain loops: for a short sequence,
  // each TensorIterator copy costs about a microsecond of a call of tens.
  Tensor bias;
  if (w.b_ih.defined() || w.b_hh.defined()) {
    bias = at::empty({GH}, x.options());
    T* sum = bias.mutable_data_ptr<T>();
    const T* b_ih = w.b_ih.defined() ? w.b_ih.const_data_ptr<T>() : nullptr;
    const T* b_hh = w.b_hh.defined() ? w.b_hh.const_data_ptr<T>() : nullptr;
    const int64_t folded = gru ? 2 * H : GH;
    for (int64_t j = 0; j < GH; ++j) {
      sum[j] = (b_ih != nullptr ? b_ih[j] : T(0)) +
               (b_hh != nullptr && j < folded ? b_hh[j] : T(0));
    }
  }
  Tensor output = at::empty({N, H_out}, x.options());
  Tensor xg = lstm || gru ? at::empty({N, GH}, x.options()) : output;
  if (N * GH * x.size(1) <= kLibraryProduct || x.size(1) >= kOwnDepth) {
    T* xg_rows = xg.mutable_data_ptr<T>();
    if (bias.defined()) {
      const T* sum = bias.const_data_ptr<T>();
      for (int64_t row = 0; row < N; ++row) std::memcpy(xg_rows + row * GH, sum, GH * sizeof(T));
    } else {
      std::memset(xg_rows, 0, N * GH * sizeof(T));
    }
    matmul<T>(x, w.w_ih.t(), transposed<T>(w.w_ih), xg, true);
  } else if (bias.defined()) {
    at::addmm_out(xg, bias, x, w.w_ih.t());
  } else {
    at::mm_out(xg, x, w.w_ih.t());
  }
  const T* b_hn = gru && w.b_hh.defined() ? w.b_hh.const_data_ptr<T>() + 2 * H : nullptr;

  Tensor h = copied<T>(h0);
  Tensor c = lstm ? copied<T>(c0) : Tensor();
  const int64_t saved = lstm ? 5 * H : (gru ? 4 * H : 0);
  Tensor workspace = at::empty({train ? N : 0, train ? saved : 0}, x.options());
  Tensor hg = at::empty({B, GH}, x.options());
  // Without a workspace, the gate activations of a step go to this scratch.
  Tensor act = train || !(lstm || gru) ? Tensor() : at::empty({B, GH}, x.options());
  Tensor m = projected ? at::empty({B, H}, x.options()) : Tensor();

  const Tensor w_hh_rows = transposed<T>(w.w_hh);
  const Tensor w_hr_rows = projected ? transposed<T>(w.w_hr) : Tensor();

  const T* xg_data = xg.const_data_ptr<T>();
  T* hg_data = hg.mutable_data_ptr<T>();
  T* h_data = h.mutable_data_ptr<T>();
  T* c_data = lstm ? c.mutable_data_ptr<T>() : nullptr;
  T* m_data = projected ? m.mutable_data_ptr<T>() : nullptr;
  T* out_data = output.mutable_data_ptr<T>();
  T* ws_data = train ? workspace.mutable_data_ptr<T>() : nullptr;
  T* act_data = act.defined() ? act.mutable_data_ptr<T>() : nullptr;

  // An LSTM step of medium size runs in one parallel region: each thread
  // computes the four gate columns of its slice of hidden units, then that
  // slice's gates. Every thread's product reads all of h, so the new state
  // goes to h_next and is copied to h after the region.
  const bool split = lstm && !projected && at::get_num_threads() > 1 &&
                     B * H * GH >= kSplitStep;
  Tensor h_next = split ? at::empty({B, H}, x.options()) : Tensor();
  T* h_next_data = split ? h_next.mutable_data_ptr<T>() : nullptr;
  const T* w_hh_data = w_hh_rows.const_data_ptr<T>();

  for (int64_t s = 0; s < steps.count; ++s) {
    const int64_t t = reverse ? steps.count - 1 - s : s;
    const int64_t rows = steps.sizes[t], offset = steps.offsets[t];
    if (split && rows * H * GH >= kSplitStep) {
      at::parallel_for(0, H, kSplitUnits, [&](int64_t first, int64_t last) {
        const int64_t units = last - first;
        const Strided<T> state{h_data, H, 1};
        for (int64_t gate = 0; gate < 4; ++gate) {
          const int64_t column = gate * H + first;
          gemm_range<T>(state, rows, H, w_hh_data + column, GH, hg_data + column, GH,
                        false, 0, units);
        }
        for (int64_t b = 0; b < rows; ++b) {
          const T* xg_row = xg_data + (offset + b) * GH + first;
          const T* hg_row = hg_data + b * GH + first;
          T* out_row = out_data + (offset + b) * H + first;
          T* c_row = c_data + b * H + first;
          T* h_row = h_next_data + b * H + first;
          if (train) {
            T* ws_row = ws_data + (offset + b) * saved + first;
            lstm_row<T, true>(H, units, xg_row, hg_row, ws_row, c_row, h_row, out_row);
          } else {
            T* act_row = act_data + b * GH + first;
            lstm_row<T, false>(H, units, xg_row, hg_row, act_row, c_row, h_row, out_row);
          }
        }
      });
      std::memcpy(h_data, h_next_data, rows * H * sizeof(T));
      continue;
    }
    matmul_rows<T>(h, 0, rows, w_hh_rows, hg, 0, false, false);

    for_rows(rows, GH, [&](int64_t begin, int64_t end) {
      for (int64_t b = begin; b < end; ++b) {
        const T* xg_row = xg_data + (offset + b) * GH;
        T* hg_row = hg_data + b * GH;
        T* out_row = out_data + (offset + b) * H_out;
        T* ws_row = train ? ws_data + (offset + b) * saved
                          : (act.defined() ? act_data + b * GH : nullptr);
        if (lstm) {
          T* h_row = projected ? m_data + b * H : h_data + b * H_out;
          T* o_row = projected ? nullptr : out_row;
          if (train) {
            lstm_row<T, true>(H, H, xg_row, hg_row, ws_row, c_data + b * H, h_row, o_row);
          } else {
            lstm_row<T, false>(H, H, xg_row, hg_row, ws_row, c_data + b * H, h_row, o_row);
          }
        } else if (gru) {
          if (train) {
            gru_row<T, true>(H, xg_row, hg_row, b_hn, ws_row, h_data + b * H, out_row);
          } else {
            gru_row<T, false>(H, xg_row, hg_row, b_hn, ws_row, h_data + b * H, out_row);
          }
        } else {
          rnn_row<T>(mode, H, hg_row, h_data + b * H, out_row);
        }
      }
    });

    if (projected) {
      matmul_rows<T>(m, 0, rows, w_hr_rows, h, 0, false, false);
      std::memcpy(out_data + offset * H_out, h_data, rows * H_out * sizeof(T));
    }
  }
  return {output, h, lstm ? c : at::empty({0}, x.options()), workspace};
}

// Backward gate arithmetic of one row. dh contains dL/dh_t of the row on
// entry, and the GRU row replaces it with the part of dL/dh_{t-1} that bypasses W_hh.

template <typename T>
__attribute__((noinline)) void rnn_backward_row(Mode mode, int64_t H, const T* __restrict out,
                             const T* __restrict dh, T* __restrict dg) {
  if (mode == Mode::kTanh) {
    for (int64_t j = 0; j < H; ++j) dg[j] = dh[j] * (T(1) - out[j] * out[j]);
  } else {
    for (int64_t j = 0; j < H; ++j) dg[j] = out[j] > T(0) ? dh[j] : T(0);
  }
}

template <typename T>
__attribute__((noinline)) void lstm_backward_row(int64_t H, const T* __restrict act,
                              const T* __restrict c_prev, const T* __restrict dh,
                              T* __restrict dc, T* __restrict dg, T* __restrict m) {
  for (int64_t j = 0; j < H; ++j) {
    const T i = act[j], f = act[H + j], g = act[2 * H + j], o = act[3 * H + j];
    const T tanh_c = Math<T>::tanh(act[4 * H + j]);
    const T dc_next = dc[j] + dh[j] * o * (T(1) - tanh_c * tanh_c);
    const T d_o = dh[j] * tanh_c;
    dg[j] = dc_next * g * i * (T(1) - i);
    dg[H + j] = dc_next * c_prev[j] * f * (T(1) - f);
    dg[2 * H + j] = dc_next * i * (T(1) - g * g);
    dg[3 * H + j] = d_o * o * (T(1) - o);
    dc[j] = dc_next * f;
    if (m != nullptr) m[j] = o * tanh_c;
  }
}

template <typename T>
__attribute__((noinline)) void gru_backward_row(int64_t H, const T* __restrict act,
                             const T* __restrict h_prev, T* __restrict dh,
                             T* __restrict dg, T* __restrict dg_recurrent) {
  for (int64_t j = 0; j < H; ++j) {
    const T r = act[j], z = act[H + j], n = act[2 * H + j], hn = act[3 * H + j];
    const T d = dh[j];
    const T dn_pre = d * (T(1) - z) * (T(1) - n * n);
    const T dz = d * (h_prev[j] - n);
    const T dr_pre = dn_pre * hn * r * (T(1) - r);
    const T dz_pre = dz * z * (T(1) - z);
    dg[j] = dr_pre;
    dg[H + j] = dz_pre;
    dg[2 * H + j] = dn_pre;
    dg_recurrent[j] = dr_pre;
    dg_recurrent[H + j] = dz_pre;
    dg_recurrent[2 * H + j] = dn_pre * r;
    dh[j] = d * z;
  }
}

// grad_w_hh = sum over packed rows of dgates[row]^T h_prev[row], where h_prev
// is the state the row started from: an output row of the step before, or a
// row of h0. Runs of rows whose sources are consecutive share one product, so
// an unpacked batch takes two products and no copy.
template <typename T>
void accumulate_recurrent_weight_grad(const Tensor& dgates, const Tensor& output,
                                      const Tensor& h0, const Steps& steps, bool reverse,
                                      Tensor& grad_w_hh) {
  struct Segment {
    int64_t row, source_row, count;
    bool from_h0;
  };
  std::vector<Segment> segments;
  auto add = [&](int64_t row, bool from_h0, int64_t source_row, int64_t count) {
    if (count <= 0) return;
    if (!segments.empty()) {
      Segment& last = segments.back();
      if (last.from_h0 == from_h0 && last.row + last.count == row &&
          last.source_row + last.count == source_row) {
        last.count += count;
        return;
      }
    }
    segments.push_back({row, source_row, count, from_h0});
  };
  for (int64_t t = 0; t < steps.count; ++t) {
    const int64_t before = reverse ? t + 1 : t - 1;
    const int64_t rows = steps.sizes[t], offset = steps.offsets[t];
    if (before < 0 || before >= steps.count) {
      add(offset, true, 0, rows);
      continue;
    }
    const int64_t carried = std::min(rows, steps.sizes[before]);
    add(offset, false, steps.offsets[before], carried);
    add(offset + carried, true, carried, rows - carried);
  }
  for (const Segment& segment : segments) {
    const Tensor& source = segment.from_h0 ? h0 : output;
    matmul_transposed<T>(dgates.narrow(0, segment.row, segment.count),
                         source.narrow(0, segment.source_row, segment.count), grad_w_hh,
                         true);
  }
}

// dst[r, :] += src[offset + r, :] for r < rows, where src has strides
// (stride0, stride1). A loss such as output.sum() passes an expanded gradient
// with strides (0, 0), which is read in place rather than copied.
template <typename T>
void add_rows(const T* src, int64_t stride0, int64_t stride1, int64_t offset,
              int64_t rows, int64_t width, T* __restrict dst) {
  if (stride1 == 1 && stride0 == width) {
    const T* __restrict g = src + offset * width;
    for (int64_t k = 0; k < rows * width; ++k) dst[k] += g[k];
    return;
  }
  for (int64_t r = 0; r < rows; ++r) {
    const T* g = src + (offset + r) * stride0;
    for (int64_t k = 0; k < width; ++k) dst[r * width + k] += g[k * stride1];
  }
}

using Gradients = std::tuple<Tensor, Tensor, Tensor, Tensor, Tensor, Tensor, Tensor, Tensor>;

template <typename T>
Gradients backward_impl(Mode mode, const Tensor& grad_output, const Tensor& grad_h_n,
                        const Tensor& grad_c_n, const Tensor& x, const Tensor& h0,
                        const Tensor& c0, const Weights& w, const Tensor& output,
                        const Tensor& workspace, const Steps& steps, bool reverse,
                        bool input_grad) {
  const int64_t G = gate_count(mode);
  const int64_t GH = w.w_hh.size(0), H = GH / G, H_out = w.w_hh.size(1);
  const int64_t N = x.size(0), B = h0.size(0);
  const bool lstm = mode == Mode::kLstm, gru = mode == Mode::kGru;
  const bool projected = w.w_hr.defined();
  const int64_t saved = lstm ? 5 * H : (gru ? 4 * H : 0);
  TORCH_CHECK(workspace.size(0) == N && (saved == 0 || workspace.size(1) == saved),
              "the fused backward needs the workspace saved by a forward run with "
              "train=True");

  // dh and dc start as the gradients of the final state; after step t they
  // hold dL/dh_{t-1} and dL/dc_{t-1} for the rows active at t, and rows that
  // are not active keep theirs. At the end they are the initial-state grads.
  Tensor dh = grad_h_n.defined() ? grad_h_n.clone(at::MemoryFormat::Contiguous)
                                 : at::zeros({B, H_out}, x.options());
  Tensor dc;
  if (lstm) {
    dc = grad_c_n.defined() ? grad_c_n.clone(at::MemoryFormat::Contiguous)
                            : at::zeros({B, H}, x.options());
  }
  // Gradients of the gate pre-activations, one block per gate. They are
  // those of the input side; the recurrent side differs only in the GRU's n
  // block, by the factor r, so the GRU also keeps one step of the recurrent
  // side in dgates_step.
  Tensor dgates = at::empty({N, GH}, x.options());
  Tensor dgates_step = gru ? at::empty({B, GH}, x.options()) : Tensor();
  Tensor dm = projected ? at::empty({B, H}, x.options()) : Tensor();
  Tensor m = projected ? at::empty({B, H}, x.options()) : Tensor();
  Tensor grad_w_hr = projected ? at::zeros_like(w.w_hr) : at::empty({0}, x.options());

  const Tensor w_hh_rows = w.w_hh.contiguous();
  const Tensor w_hr_rows = projected ? w.w_hr.contiguous() : Tensor();

  const T* act_data = saved ? workspace.const_data_ptr<T>() : nullptr;
  const T* out_data = output.const_data_ptr<T>();
  const T* gout_data = grad_output.defined() ? grad_output.const_data_ptr<T>() : nullptr;
  const T* h0_data = h0.const_data_ptr<T>();
  const T* c0_data = lstm ? c0.const_data_ptr<T>() : nullptr;
  T* dh_data = dh.mutable_data_ptr<T>();
  T* dc_data = lstm ? dc.mutable_data_ptr<T>() : nullptr;
  T* dg_data = dgates.mutable_data_ptr<T>();
  T* dgs_data = gru ? dgates_step.mutable_data_ptr<T>() : nullptr;
  T* dm_data = projected ? dm.mutable_data_ptr<T>() : nullptr;
  T* m_data = projected ? m.mutable_data_ptr<T>() : nullptr;

  for (int64_t s = steps.count - 1; s >= 0; --s) {
    const int64_t t = reverse ? steps.count - 1 - s : s;
    const int64_t rows = steps.sizes[t], offset = steps.offsets[t];
    if (gout_data != nullptr) {
      add_rows<T>(gout_data, grad_output.stride(0), grad_output.stride(1), offset, rows,
                  H_out, dh_data);
    }
    if (projected) {
      matmul_rows<T>(dh, 0, rows, w_hr_rows, dm, 0, false);
    }

    for_rows(rows, GH, [&](int64_t begin, int64_t end) {
      for (int64_t b = begin; b < end; ++b) {
        const int64_t row = offset + b;
        const int64_t before = steps.previous_row(t, b, reverse);
        T* dg_row = dg_data + row * GH;
        if (lstm) {
          const T* c_prev = before >= 0 ? act_data + before * saved + 4 * H : c0_data + b * H;
          const T* dh_row = projected ? dm_data + b * H : dh_data + b * H_out;
          T* m_row = projected ? m_data + b * H : nullptr;
          lstm_backward_row<T>(H, act_data + row * saved, c_prev, dh_row,
                               dc_data + b * H, dg_row, m_row);
        } else if (gru) {
          const T* h_prev = before >= 0 ? out_data + before * H : h0_data + b * H;
          gru_backward_row<T>(H, act_data + row * saved, h_prev, dh_data + b * H, dg_row,
                              dgs_data + b * GH);
        } else {
          rnn_backward_row<T>(mode, H, out_data + row * H, dh_data + b * H, dg_row);
        }
      }
    });

    if (projected) {
      grad_w_hr.addmm_(dh.narrow(0, 0, rows).t(), m.narrow(0, 0, rows));
    }
    // The GRU's gate loop already stored d * z, the part of dL/dh_{t-1} that
    // bypasses W_hh, so its product adds to dh.
    if (gru) {
      matmul_rows<T>(dgates_step, 0, rows, w_hh_rows, dh, 0, true);
    } else {
      matmul_rows<T>(dgates, offset, rows, w_hh_rows, dh, 0, false);
    }
  }

  // Input side, then (GRU) turn the n block into the recurrent side in place.
  Tensor grad_x = input_grad ? at::empty({N, x.size(1)}, x.options())
                             : at::empty({0}, x.options());
  if (input_grad) matmul<T>(dgates, w.w_ih, w.w_ih, grad_x, false);
  Tensor grad_w_ih = at::empty_like(w.w_ih);
  matmul_transposed<T>(dgates, x, grad_w_ih, false);
  const bool biased = w.b_ih.defined() || w.b_hh.defined();
  Tensor sums = biased ? at::sum(dgates, 0) : Tensor();
  if (gru) {
    for_rows(N, H, [&](int64_t begin, int64_t end) {
      for (int64_t row = begin; row < end; ++row) {
        T* __restrict dn = dg_data + row * GH + 2 * H;
        const T* __restrict r = act_data + row * saved;
        for (int64_t j = 0; j < H; ++j) dn[j] *= r[j];
      }
    });
  }
  Tensor grad_w_hh = at::zeros_like(w.w_hh);
  accumulate_recurrent_weight_grad<T>(dgates, output, h0, steps, reverse, grad_w_hh);

  Tensor grad_b_ih = at::empty({0}, x.options());
  Tensor grad_b_hh = at::empty({0}, x.options());
  if (w.b_ih.defined()) grad_b_ih = sums;
  if (w.b_hh.defined()) {
    if (gru) {
      grad_b_hh = sums.clone();
      grad_b_hh.narrow(0, 2 * H, H).copy_(at::sum(dgates.narrow(1, 2 * H, H), 0));
    } else {
      grad_b_hh = w.b_ih.defined() ? sums.clone() : sums;
    }
  }
  return {grad_x, dh, lstm ? dc : at::empty({0}, x.options()), grad_w_ih, grad_w_hh,
          grad_b_ih, grad_b_hh, grad_w_hr};
}

Tensor defined_or_empty(const std::optional<Tensor>& tensor) {
  return tensor.has_value() && tensor->defined() ? tensor->contiguous() : Tensor();
}

Weights collect_weights(const Tensor& w_ih, const Tensor& w_hh,
                        const std::optional<Tensor>& b_ih,
                        const std::optional<Tensor>& b_hh,
                        const std::optional<Tensor>& w_hr) {
  return {w_ih.contiguous(), w_hh.contiguous(), defined_or_empty(b_ih),
          defined_or_empty(b_hh), defined_or_empty(w_hr)};
}

void check_inputs(Mode mode, const Tensor& x, const Tensor& h0, const Tensor& c0,
                  const Weights& w) {
  TORCH_CHECK(x.dim() == 2, "expected input of shape (N, I), got ", x.sizes());
  TORCH_CHECK(h0.dim() == 2, "expected h0 of shape (B, H_out), got ", h0.sizes());
  TORCH_CHECK(x.device().is_cpu(), "the fused kernels run on CPU tensors only");
  const int64_t G = gate_count(mode);
  TORCH_CHECK(w.w_hh.dim() == 2 && w.w_hh.size(0) % G == 0,
              "expected w_hh of shape (G*H, H_out) with G=", G, ", got ", w.w_hh.sizes());
  const int64_t H = w.w_hh.size(0) / G;
  TORCH_CHECK(w.w_ih.dim() == 2 && w.w_ih.size(0) == G * H && w.w_ih.size(1) == x.size(1),
              "expected w_ih of shape (", G * H, ", ", x.size(1), "), got ", w.w_ih.sizes());
  TORCH_CHECK(h0.size(1) == w.w_hh.size(1), "expected h0 with ", w.w_hh.size(1),
              " features, got ", h0.sizes());
  if (w.w_hr.defined()) {
    TORCH_CHECK(mode == Mode::kLstm, "only the LSTM takes w_hr");
    TORCH_CHECK(w.w_hr.dim() == 2 && w.w_hr.size(0) == w.w_hh.size(1) && w.w_hr.size(1) == H,
                "expected w_hr of shape (", w.w_hh.size(1), ", ", H, "), got ",
                w.w_hr.sizes());
  } else {
    TORCH_CHECK(w.w_hh.size(1) == H, "expected w_hh of shape (", G * H, ", ", H,
                "), got ", w.w_hh.sizes());
  }
  if (mode == Mode::kLstm) {
    TORCH_CHECK(c0.defined() && c0.dim() == 2 && c0.size(0) == h0.size(0) && c0.size(1) == H,
                "expected c0 of shape (", h0.size(0), ", ", H, ") for an LSTM");
  }
  for (const Tensor* bias : {&w.b_ih, &w.b_hh}) {
    TORCH_CHECK(!bias->defined() || (bias->dim() == 1 && bias->size(0) == G * H),
                "expected biases of shape (", G * H, "), got ", bias->sizes());
  }
}

std::tuple<Tensor, Tensor, Tensor, Tensor> fused_rnn_forward(
    const Tensor& input, const Tensor& h0, const std::optional<Tensor>& c0,
    const Tensor& w_ih, const Tensor& w_hh, const std::optional<Tensor>& b_ih,
    const std::optional<Tensor>& b_hh, const std::optional<Tensor>& w_hr,
    at::IntArrayRef batch_sizes, c10::string_view mode_name, bool reverse, bool train) {
  const Mode mode = parse_mode(mode_name);
  const Tensor x = input.contiguous();
  const Tensor h = h0.contiguous();
  const Tensor c = defined_or_empty(c0);
  const Weights w = collect_weights(w_ih, w_hh, b_ih, b_hh, w_hr);
  check_inputs(mode, x, h, c, w);
  const Steps steps(batch_sizes, x.size(0), h.size(0));
  std::tuple<Tensor, Tensor, Tensor, Tensor> result;
  AT_DISPATCH_FLOATING_TYPES(x.scalar_type(), "fused_rnn_forward", [&] {
    result = forward_impl<scalar_t>(mode, x, h, c, w, steps, reverse, train);
  });
  return result;
}

Gradients fused_rnn_backward(
    const std::optional<Tensor>& grad_output, const std::optional<Tensor>& grad_h_n,
    const std::optional<Tensor>& grad_c_n, const Tensor& input, const Tensor& h0,
    const std::optional<Tensor>& c0, const Tensor& w_ih, const Tensor& w_hh,
    const std::optional<Tensor>& b_ih, const std::optional<Tensor>& b_hh,
    const std::optional<Tensor>& w_hr, const Tensor& output, const Tensor& workspace,
    at::IntArrayRef batch_sizes, c10::string_view mode_name, bool reverse,
    bool input_grad) {
  const Mode mode = parse_mode(mode_name);
  const Tensor x = input.contiguous();
  const Tensor h = h0.contiguous();
  const Tensor c = defined_or_empty(c0);
  const Weights w = collect_weights(w_ih, w_hh, b_ih, b_hh, w_hr);
  check_inputs(mode, x, h, c, w);
  const Steps steps(batch_sizes, x.size(0), h.size(0));
  Gradients result;
  AT_DISPATCH_FLOATING_TYPES(x.scalar_type(), "fused_rnn_backward", [&] {
    result = backward_impl<scalar_t>(
        mode, grad_output.has_value() ? *grad_output : Tensor(), defined_or_empty(grad_h_n),
        defined_or_empty(grad_c_n), x, h, c, w, output.contiguous(),
        workspace.contiguous(), steps, reverse, input_grad);
  });
  return result;
}

}  // namespace

TORCH_LIBRARY(rnnkit, m) {
  m.def(
      "fused_rnn_forward(Tensor input, Tensor h0, Tensor? c0, Tensor w_ih, "
      "Tensor w_hh, Tensor? b_ih, Tensor? b_hh, Tensor? w_hr, int[] batch_sizes, "
      "str mode, bool reverse, bool train) -> (Tensor, Tensor, Tensor, Tensor)");
  m.def(
      "fused_rnn_backward(Tensor? grad_output, Tensor? grad_h_n, Tensor? grad_c_n, "
      "Tensor input, Tensor h0, Tensor? c0, Tensor w_ih, Tensor w_hh, Tensor? b_ih, "
      "Tensor? b_hh, Tensor? w_hr, Tensor output, Tensor workspace, "
      "int[] batch_sizes, str mode, bool reverse, bool input_grad) -> "
      "(Tensor, Tensor, Tensor, Tensor, Tensor, Tensor, Tensor, Tensor)");
}

TORCH_LIBRARY_IMPL(rnnkit, CPU, m) {
  m.impl("fused_rnn_forward", &fused_rnn_forward);
  m.impl("fused_rnn_backward", &fused_rnn_backward);
}
