// Fused CPU forward and backward passes for one recurrent layer and direction.
//
// The ops run a whole packed, time-major sequence in one call, on a team of
// threads in one parallel region (see Team). The input projection runs as one
// matrix product per chunk of consecutive steps. Each step is then one
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
#include <ATen/ops/zeros.h>
#include <ATen/ops/zeros_like.h>
#include <torch/csrc/autograd/custom_function.h>
#include <torch/library.h>

#include <omp.h>
#include <pthread.h>
#include <unistd.h>

#include <algorithm>
#include <atomic>
#include <cmath>
#include <cstdint>
#include <cstring>
#include <tuple>
#include <utility>
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

  // Where the rows of step t start from. Rows [0, rows) continue from packed
  // rows previous_offset + b of the step before, which is t - 1 forward and
  // t + 1 in reverse. The other rows start from the initial state: all rows
  // of the first step, and in reverse the rows that join as the batch grows.
  struct Carry {
    int64_t rows, previous_offset;
  };
  Carry carry(int64_t t, bool reverse) const {
    const int64_t before = reverse ? t + 1 : t - 1;
    if (before < 0 || before >= count) return {0, 0};
    return {std::min(sizes[t], sizes[before]), offsets[before]};
  }

  // The rows of batch entries [b0, b1) at step t: how many there are, the
  // packed row of the first, how many of them continue from the step
  // before, and the packed row those continue from.
  struct Part {
    int64_t rows, offset, carried, previous_offset;
  };
  Part part(int64_t t, bool reverse, int64_t b0, int64_t b1) const {
    const Carry before = carry(t, reverse);
    auto clip = [&](int64_t n) { return std::clamp<int64_t>(n - b0, 0, b1 - b0); };
    return {clip(sizes[t]), offsets[t] + b0, clip(before.rows), before.previous_offset + b0};
  }

  // The batch entries [b0, b1) of share number index out of count. The
  // shares are cut so that each has about as many packed rows as the others.
  // Each entry goes to the share whose part of the rows contains the middle
  // of the entry's rows, so that one long entry does not leave a share empty.
  std::pair<int64_t, int64_t> batch_share(int64_t index, int64_t count, int64_t batch) const {
    // lengths[b]: the number of steps that batch entry b takes part in.
    std::vector<int64_t> lengths(batch + 1, 0);
    for (int64_t t = 0; t < this->count; ++t) lengths[sizes[t] - 1] += 1;
    for (int64_t b = batch - 1; b >= 0; --b) lengths[b] += lengths[b + 1];
    const int64_t total = offsets.empty() ? 0 : offsets.back() + sizes.back();
    auto boundary = [&](int64_t share) {
      if (share >= count) return batch;
      const int64_t target = total * share / count;
      int64_t b = 0, rows = 0;
      while (b < batch && 2 * rows + lengths[b] <= 2 * target) rows += lengths[b++];
      return b;
    };
    return {boundary(index), boundary(index + 1)};
  }
};

// Whether this process is a forked child, whose parent may have started
// OpenMP threads. libgomp's thread pool does not survive fork(): a child that opens
// a parallel region after its parent did waits for the parent's threads
// forever, so a forked child runs the kernels' own loops on one thread.
// NOTE: the ops still call a few torch operations that may run in parallel
// (at::mm for a large input gradient with few gate columns, the copy and
// fills of large tensors). These hang in such a child as torch's own layers
// do (seen with torch 2.13), unless the child calls
// torch.set_num_threads(1), as DataLoader workers do.
std::atomic<bool> forked{false};
const int fork_handler = pthread_atfork(nullptr, nullptr, [] { forked = true; });

// Small and medium products run on a register-blocked GEMM written here,
// not on at::mm. At these sizes (a few rows, tens to hundreds of columns)
// MKL's call overhead and thread start-up cost more than the arithmetic.
// Under load, one descheduled MKL thread also stalls the whole product.
// NOTE: the thresholds below come from measurements on one 2-core AVX-512
// AMD machine (torch 2.13 with MKL); other CPUs may prefer other values.

// From this many multiply-adds up, this GEMM splits its columns across
// torch's intra-op threads.
constexpr int64_t kParallelProduct = 4 * 1024 * 1024;
// Every step product runs on this GEMM: on two threads it reached 110G to
// 115G multiply-adds per second for (64 x 256) @ (256 x 1024) and larger step
// products, against 65G to 80G for at::mm (MKL).
// A sequence whose largest step product has at least this many
// multiply-adds runs on a team of torch's intra-op threads (see Team). Below
// it, waking the second thread for every step cost more than it saved. On two
// threads, 200 steps of an RNN with 2 rows x 64 units (8K multiply-adds a
// step) took 0.18 ms on the team and 0.12 ms on one thread. For a GRU of that
// size (24K), the team took 0.23 ms and one thread 0.28 ms.
constexpr int64_t kTeamProduct = 16 * 1024;
// The backward's input gradient goes to at::mm above this many
// multiply-adds, whose packed GEMM is faster there, unless its inner
// dimension (the gate columns) is at least kOwnDepth. For those, this GEMM on
// two threads measured 105G to 110G multiply-adds per second against 72G to
// 99G for at::mm (MKL), e.g. (6400 x 128) @ (128 x 1024). Weight gradients
// always run on this GEMM. Against at::mm, training then ranged from 2%
// slower to 8% faster at (100, 64, 128, 256) and (200, 32, 32, 64).
constexpr int64_t kLibraryProduct = 8 * 1024 * 1024;
constexpr int64_t kOwnDepth = 128;
// The input projection of the forward op runs in chunks of steps with at
// least this many pre-activations (256 KiB in float32), or one step.
constexpr int64_t kChunkElements = 64 * 1024;

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
// with the R x V accumulators in registers. The sums start from zero and are
// added to out at the end.
template <typename T, int R, int V>
inline __attribute__((always_inline)) void gemm_block(Strided<T> a, int64_t K, const T* w,
                                                      int64_t ldw, T* out, int64_t ldo,
                                                      bool accumulate) {
  using Vec = typename Vector<T>::Type;
  constexpr int64_t L = Vector<T>::kLanes;
  // With few accumulators, each one's chain of dependent multiply-adds
  // would set the pace, so C chains per accumulator take alternate k.
  constexpr int C = R * V >= 8 ? 1 : (R * V >= 4 ? 2 : 4);
  Vec sums[C][R][V];
  for (int c = 0; c < C; ++c) {
    for (int r = 0; r < R; ++r) {
      for (int v = 0; v < V; ++v) sums[c][r][v] = Vec{};
    }
  }
  int64_t k = 0;
  for (; k + C <= K; k += C) {
    for (int c = 0; c < C; ++c) {
      Vec w_k[V];
      for (int v = 0; v < V; ++v) w_k[v] = load_vector<Vec>(w + (k + c) * ldw + v * L);
      for (int r = 0; r < R; ++r) {
        const T value = a.at(r, k + c);
        for (int v = 0; v < V; ++v) sums[c][r][v] += value * w_k[v];
      }
    }
  }
  for (; k < K; ++k) {
    Vec w_k[V];
    for (int v = 0; v < V; ++v) w_k[v] = load_vector<Vec>(w + k * ldw + v * L);
    for (int r = 0; r < R; ++r) {
      const T value = a.at(r, k);
      for (int v = 0; v < V; ++v) sums[0][r][v] += value * w_k[v];
    }
  }
  for (int c = 1; c < C; ++c) {
    for (int r = 0; r < R; ++r) {
      for (int v = 0; v < V; ++v) sums[0][r][v] += sums[c][r][v];
    }
  }
  Vec (&total)[R][V] = sums[0];
  for (int r = 0; r < R; ++r) {
    for (int v = 0; v < V; ++v) {
      T* target = out + r * ldo + v * L;
      store_vector(target, accumulate ? load_vector<Vec>(target) + total[r][v] : total[r][v]);
    }
  }
}

// Columns [column, column + V * lanes) of every row, R rows at a time. Four
// vectors of columns take 16 accumulators and fewer take 8, so that a narrow
// range (a thread's slice of a step) still reuses each loaded vector of w.
template <typename T, int V>
void gemm_columns(Strided<T> a, int64_t rows, int64_t K, const T* w, int64_t ldw,
                  T* out, int64_t ldo, bool accumulate) {
  constexpr int R = V == 4 ? 6 : 8;
  int64_t r = 0;
  for (; r + R <= rows; r += R) {
    const Strided<T> block{&a.at(r, 0), a.row_stride, a.column_stride};
    gemm_block<T, R, V>(block, K, w, ldw, out + r * ldo, ldo, accumulate);
  }
  if (r + 4 <= rows) {
    const Strided<T> block{&a.at(r, 0), a.row_stride, a.column_stride};
    gemm_block<T, 4, V>(block, K, w, ldw, out + r * ldo, ldo, accumulate);
    r += 4;
  }
  if (r + 2 <= rows) {
    const Strided<T> block{&a.at(r, 0), a.row_stride, a.column_stride};
    gemm_block<T, 2, V>(block, K, w, ldw, out + r * ldo, ldo, accumulate);
    r += 2;
  }
  for (; r < rows; ++r) {
    const Strided<T> block{&a.at(r, 0), a.row_stride, a.column_stride};
    gemm_block<T, 1, V>(block, K, w, ldw, out + r * ldo, ldo, accumulate);
  }
}

// The dot product of row r of a and y[:K], in vectors when a's row is
// contiguous.
template <typename T>
T dot(Strided<T> a, int64_t r, const T* y, int64_t K) {
  using Vec = typename Vector<T>::Type;
  constexpr int64_t L = Vector<T>::kLanes;
  int64_t k = 0;
  T sum = T(0);
  if (a.column_stride == 1) {
    const T* x = &a.at(r, 0);
    Vec sums[4] = {};
    for (; k + 4 * L <= K; k += 4 * L) {
      for (int c = 0; c < 4; ++c) {
        sums[c] += load_vector<Vec>(x + k + c * L) * load_vector<Vec>(y + k + c * L);
      }
    }
    const Vec total = (sums[0] + sums[1]) + (sums[2] + sums[3]);
    for (int64_t lane = 0; lane < L; ++lane) sum += total[lane];
  }
  for (; k < K; ++k) sum += a.at(r, k) * y[k];
  return sum;
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
  // The last columns, fewer than a vector (all of them for a gradient with
  // respect to an input of a few features), as dot products along K.
  std::vector<T> column(j < end ? K : 0);
  for (; j < end; ++j) {
    for (int64_t k = 0; k < K; ++k) column[k] = w[k * ldw + j];
    for (int64_t r = 0; r < rows; ++r) {
      const T sum = dot<T>(a, r, column.data(), K);
      out[r * ldo + j] = accumulate ? out[r * ldo + j] + sum : sum;
    }
  }
}

template <typename T>
void gemm(Strided<T> a, int64_t rows, int64_t K, const T* w, int64_t ldw, int64_t M,
          T* out, int64_t ldo, bool accumulate) {
  if (rows == 0 || M == 0) return;
  if (K == 0) {
    // An empty sum, as in a weight gradient over no packed rows.
    for (int64_t r = 0; r < rows && !accumulate; ++r) std::fill_n(out + r * ldo, M, T(0));
    return;
  }
  constexpr int64_t L = Vector<T>::kLanes;
  // A long inner dimension (the packed rows of a weight gradient) goes in
  // blocks, each summed on its own and then added to out, which keeps the
  // chains of float additions short and a block of w in cache.
  constexpr int64_t kDepthBlock = 256;
  auto columns = [&](int64_t begin, int64_t end) {
    for (int64_t k = 0; k < K; k += kDepthBlock) {
      const Strided<T> block{&a.at(0, k), a.row_stride, a.column_stride};
      gemm_range<T>(block, rows, std::min(kDepthBlock, K - k), w + k * ldw, ldw, out, ldo,
                    accumulate || k > 0, begin, end);
    }
  };
  const int64_t work = rows * K * M;
  if (work < kParallelProduct || at::get_num_threads() == 1 || forked) {
    columns(0, M);
    return;
  }
  // Chunks of four vectors of columns, so each thread runs full blocks.
  const int64_t chunk = 4 * L;
  const int64_t chunks = (M + chunk - 1) / chunk;
  at::parallel_for(0, chunks, 1, [&](int64_t first, int64_t last) {
    columns(first * chunk, std::min(M, last * chunk));
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

// out (+)= a^T @ b with a (N, K) and b (N, M): the weight gradients, summed
// over packed rows. A b with strided rows or a strided out goes to at::mm.
template <typename T>
void matmul_transposed(const Tensor& a, const Tensor& b, Tensor out, bool accumulate) {
  const int64_t rows = a.size(0), K = a.size(1), M = b.size(1);
  if (b.stride(1) != 1 || !out.is_contiguous()) {
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
  if (forked) {
    fn(0, rows);
    return;
  }
  const int64_t grain = std::max<int64_t>(1, 16384 / std::max<int64_t>(1, row_elements));
  at::parallel_for(0, rows, grain, fn);
}

// Rows of a matrix: row b starts at data + b * stride.
template <typename T>
struct Rows {
  T* data;
  int64_t stride;
  T* operator[](int64_t b) const { return data + b * stride; }
};

// Forward gate arithmetic of the rows of one step, for hidden units
// [0, units) of a slice. Every pointer starts at the slice's first unit. The
// gate blocks of bias and act are H apart, and those of xg and hg gs apart
// (see the column order in forward_impl). bias contains every bias that
// adds to a pre-activation, or zeros. The GRU's b_hn is apart, because r
// multiplies it. act receives the gate activations when kSave is set (the
// workspace rows for the backward). One call per step and slice keeps the
// loop set-up out of the rows. The functions are not inlined, and the unit
// loops are marked ivdep, because GCC 12 left them scalar otherwise.

// The Elman RNN's input projection is computed into its output rows, which
// saves a buffer: out contains the input pre-activation on entry.
template <typename T>
__attribute__((noinline)) void rnn_rows(Mode mode, int64_t rows, int64_t units,
                                        const T* __restrict bias, Rows<const T> hg,
                                        Rows<T> out) {
  for (int64_t b = 0; b < rows; ++b) {
    const T* __restrict hg_row = hg[b];
    T* __restrict out_row = out[b];
    if (mode == Mode::kTanh) {
#pragma GCC ivdep
      for (int64_t j = 0; j < units; ++j) {
        out_row[j] = Math<T>::tanh(out_row[j] + bias[j] + hg_row[j]);
      }
    } else {
#pragma GCC ivdep
      for (int64_t j = 0; j < units; ++j) {
        const T pre = out_row[j] + bias[j] + hg_row[j];
        out_row[j] = pre < T(0) ? T(0) : pre;  // NaN stays NaN, as in torch.relu
      }
    }
  }
}

// c is updated in place, and h receives the new state (output rows, or the
// rows of m that the projection reads).
template <typename T, bool kSave>
__attribute__((noinline)) void lstm_rows(int64_t rows, int64_t H, int64_t gs, int64_t units,
                                         Rows<const T> xg, const T* __restrict bias,
                                         Rows<const T> hg, Rows<T> act, Rows<T> c,
                                         Rows<T> h) {
  for (int64_t b = 0; b < rows; ++b) {
    const T* __restrict x = xg[b];
    const T* __restrict r = hg[b];
    T* __restrict a = act[b];
    T* __restrict c_row = c[b];
    T* __restrict h_row = h[b];
#pragma GCC ivdep
    for (int64_t j = 0; j < units; ++j) {
      const T i = Math<T>::sigmoid(x[j] + bias[j] + r[j]);
      const T f = Math<T>::sigmoid(x[gs + j] + bias[H + j] + r[gs + j]);
      const T g = Math<T>::tanh(x[2 * gs + j] + bias[2 * H + j] + r[2 * gs + j]);
      const T o = Math<T>::sigmoid(x[3 * gs + j] + bias[3 * H + j] + r[3 * gs + j]);
      const T c_next = f * c_row[j] + i * g;
      if (kSave) {
        a[j] = i;
        a[H + j] = f;
        a[2 * H + j] = g;
        a[3 * H + j] = o;
        a[4 * H + j] = c_next;
      }
      c_row[j] = c_next;
      h_row[j] = o * Math<T>::tanh(c_next);
    }
  }
}

// h_prev contains the states the rows start from, and out receives the new
// ones.
template <typename T, bool kSave>
__attribute__((noinline)) void gru_rows(int64_t rows, int64_t H, int64_t gs, int64_t units,
                                        Rows<const T> xg, const T* __restrict bias,
                                        Rows<const T> hg, const T* __restrict b_hn,
                                        Rows<T> act, Rows<const T> h_prev, Rows<T> out) {
  for (int64_t b = 0; b < rows; ++b) {
    const T* __restrict x = xg[b];
    const T* __restrict u = hg[b];
    const T* __restrict h = h_prev[b];
    T* __restrict a = act[b];
    T* __restrict o = out[b];
#pragma GCC ivdep
    for (int64_t j = 0; j < units; ++j) {
      const T r = Math<T>::sigmoid(x[j] + bias[j] + u[j]);
      const T z = Math<T>::sigmoid(x[gs + j] + bias[H + j] + u[gs + j]);
      const T hn = u[2 * gs + j] + b_hn[j];
      const T n = Math<T>::tanh(x[2 * gs + j] + bias[2 * H + j] + r * hn);
      if (kSave) {
        a[j] = r;
        a[H + j] = z;
        a[2 * H + j] = n;
        a[3 * H + j] = hn;
      }
      o[j] = (T(1) - z) * n + z * h[j];
    }
  }
}

// A team of threads that runs a whole sequence in one parallel region. Each
// thread owns a slice of the hidden units and computes their gate columns of
// every step's product, their gate arithmetic and their outputs. The threads
// meet at a barrier once a step (twice with a projection), because the next
// step's product reads every unit of the state. One region per sequence
// replaces the two thread wake-ups per step of splitting each product and
// each pass of gate arithmetic on its own. With a large enough batch and
// small enough weights, each thread owns a share of the batch instead, and
// the threads meet only once (see share_batch).
struct Team {
  int index = 0;
  int size = 1;

  void sync() const {
    if (size > 1) {
#pragma omp barrier
    }
  }

  // This thread's part [first, last) of count items, cut at multiples of
  // lanes while there are enough of them.
  std::pair<int64_t, int64_t> slice(int64_t count, int64_t lanes) const {
    const int64_t blocks = (count + lanes - 1) / lanes;
    return {std::min(count, blocks * index / size * lanes),
            std::min(count, blocks * (index + 1) / size * lanes)};
  }
};

// Run fn(team) on a team of the given size, or on one thread inside another
// parallel region, where a nested team would get no threads of its own.
template <typename Fn>
void run_team(int64_t threads, const Fn& fn) {
  if (threads > 1 && !omp_in_parallel()) {
#pragma omp parallel num_threads(static_cast<int>(threads))
    fn(Team{omp_get_thread_num(), omp_get_num_threads()});
    return;
  }
  fn(Team{});
}

// The number of threads for a run whose largest step product has this many
// multiply-adds and whose work splits into this many parts (vector-wide
// slices of the units, or shares of the batch). More threads than parts
// would only wait.
int64_t team_size(int64_t step_product, int64_t parts) {
  if (forked || step_product < kTeamProduct) return 1;
  return std::max<int64_t>(1, std::min<int64_t>(at::get_num_threads(), parts));
}

// Whether a team of this size shares out the batch rather than the hidden
// units. The batch entries are independent through the recurrence, so a
// thread that owns some of them runs all of their steps without waiting for
// the others. There is no barrier a step, and no wait for a core that the
// machine has slowed. Each thread then reads all the weights every step,
// which pays while they stay near its core, and each needs enough rows to
// fill the GEMM's register blocks. This was measured on two threads of a
// machine with 1 MiB of L2 a core, against the split of the units in one
// process. At (200, 32, 32, 64), inference ran 1.10x to 1.20x faster (one
// LSTM run of two at 1.8x) and training 1.09x to 1.32x. At
// (100, 64, 128, 256), with weights of 0.4 to 1.6 MiB, it ran 1.02x to
// 1.22x faster. With weights of 4 MiB and more, it was up to 12% slower, so
// those keep the split of the units.
// NOTE: the limit of twice the L2 size comes from that one machine. A
// projection also keeps the split of the units, because its weight gradient
// is summed in the loop per slice of units.
constexpr int64_t kShareRows = 8;
int64_t share_weight_bytes() {
  static const int64_t bytes = [] {
    const long l2 = sysconf(_SC_LEVEL2_CACHE_SIZE);
    return 2 * (l2 > 0 ? static_cast<int64_t>(l2) : int64_t{1024 * 1024});
  }();
  return bytes;
}
bool share_batch(int64_t threads, int64_t batch, int64_t weight_bytes, bool projected) {
  return threads > 1 && !projected && batch >= threads * kShareRows &&
         weight_bytes <= share_weight_bytes();
}

// The split of a run between the threads of its team: the team's size, and
// whether each thread owns a share of the batch or a slice of the units.
struct Plan {
  int64_t threads = 1;
  bool by_batch = false;

  // The part that one thread owns: batch entries [b0, b1), units [u0, u1)
  // and state columns [p0, p1), the same as the units without a projection.
  struct Owned {
    int64_t b0, b1, u0, u1, p0, p1;
  };
  Owned owned(const Team& team, const Steps& steps, int64_t batch, int64_t H, int64_t H_out,
              int64_t lanes) const {
    if (by_batch) {
      const auto [b0, b1] = steps.batch_share(team.index, team.size, batch);
      return {b0, b1, 0, H, 0, H_out};
    }
    const auto [u0, u1] = team.slice(H, lanes);
    const auto [p0, p1] = team.slice(H_out, lanes);
    return {0, batch, u0, u1, p0, p1};
  }

  // Whether the threads split the units, and so meet at a barrier each step.
  bool shared(const Team& team) const { return team.size > 1 && !by_batch; }
};

// The plan for a run of I input features, H units with H_out outputs and GH
// gate columns, over these steps of a batch.
template <typename T>
Plan plan_team(const Steps& steps, int64_t batch, int64_t I, int64_t H, int64_t H_out,
               int64_t GH, bool projected) {
  const int64_t largest = steps.count > 0 ? steps.sizes[0] * H_out * GH : 0;
  const int64_t batch_threads = team_size(largest, batch / kShareRows);
  const int64_t weight_bytes = (I + H_out) * GH * static_cast<int64_t>(sizeof(T));
  if (share_batch(batch_threads, batch, weight_bytes, projected)) return {batch_threads, true};
  const int64_t slices = (H + Vector<T>::kLanes - 1) / Vector<T>::kLanes;
  return {team_size(largest, slices), false};
}

// target[c, r] = source[r, c] for r < rows and c < columns, with the rows of
// source and target ld_source and ld_target apart. Tiles of 16 x 16 keep
// both the reads and the writes within a few cache lines.
template <typename T>
void transpose_block(const T* source, int64_t ld_source, int64_t rows, int64_t columns,
                     T* target, int64_t ld_target) {
  constexpr int64_t kTile = 16;
  for (int64_t r0 = 0; r0 < rows; r0 += kTile) {
    const int64_t r1 = std::min(rows, r0 + kTile);
    for (int64_t c0 = 0; c0 < columns; c0 += kTile) {
      const int64_t c1 = std::min(columns, c0 + kTile);
      for (int64_t c = c0; c < c1; ++c) {
        for (int64_t r = r0; r < r1; ++r) target[c * ld_target + r] = source[r * ld_source + c];
      }
    }
  }
}

// Columns [first, first + width) of a transposed weight of K rows, stored
// in panels of up to size columns. Panel p contains the columns from
// first + p * size on, with each of its K rows contiguous, so that a product
// over the panel reads the weights in one sequential stream.
template <typename T>
struct Panels {
  T* data;  // the whole transposed weight, K x every thread's columns
  int64_t K, first, width, size;

  int64_t count() const { return (width + size - 1) / size; }
  T* panel(int64_t p) const { return data + K * first + p * K * size; }
  int64_t columns(int64_t p) const { return std::min(size, width - p * size); }

  // Fill columns [column, column + units) of the range, counted from first,
  // with rows [0, units) of source, each K long and ld_source apart.
  void fill(const T* source, int64_t ld_source, int64_t units, int64_t column) const {
    for (int64_t u = 0; u < units;) {
      const int64_t p = (column + u) / size, within = (column + u) % size;
      const int64_t n = std::min(units - u, size - within);
      transpose_block<T>(source + u * ld_source, ld_source, n, K, panel(p) + within,
                         columns(p));
      u += n;
    }
  }
};

// out[:, :width] (+)= a @ w for a (rows, K), where out starts at column first.
template <typename T>
void gemm_panels(Strided<T> a, int64_t rows, const Panels<T>& w, T* out, int64_t ldo,
                 bool accumulate) {
  for (int64_t p = 0; p < w.count(); ++p) {
    gemm_range<T>(a, rows, w.K, w.panel(p), w.columns(p), out + p * w.size, ldo, accumulate,
                  0, w.columns(p));
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

  const int64_t saved = lstm ? 5 * H : (gru ? 4 * H : 0);
  // The biases, summed where they add: b_ih + b_hh for every gate block but
  // the GRU's n block, where only b_ih adds and b_hn goes apart, because r
  // multiplies it. Zeros stand for absent biases, so the gate loops need no
  // branches. The gate arithmetic adds them, which saves a pass over the
  // input projection. The small tensors here are filled with plain loops: for
  // a short sequence, each TensorIterator copy costs about a microsecond of a
  // call of tens.
  Tensor biases = at::empty({GH + H}, x.options());
  T* bias = biases.mutable_data_ptr<T>();
  T* b_hn = bias + GH;
  {
    const T* b_ih = w.b_ih.defined() ? w.b_ih.const_data_ptr<T>() : nullptr;
    const T* b_hh = w.b_hh.defined() ? w.b_hh.const_data_ptr<T>() : nullptr;
    const int64_t folded = gru ? 2 * H : GH;
    for (int64_t j = 0; j < GH; ++j) {
      bias[j] = (b_ih != nullptr ? b_ih[j] : T(0)) +
                (b_hh != nullptr && j < folded ? b_hh[j] : T(0));
    }
    for (int64_t j = 0; j < H; ++j) b_hn[j] = gru && b_hh != nullptr ? b_hh[2 * H + j] : T(0);
  }
  // The input projection runs in chunks of consecutive steps, each one
  // product, just before the steps of the chunk. A chunk's pre-activations
  // are then still in cache when its steps read them, and the buffer
  // contains one chunk, not the whole sequence. The Elman RNN's projection
  // goes into its output rows.
  Tensor output = at::empty({N, H_out}, x.options());
  std::vector<int64_t> chunk_starts;  // positions s in the direction of travel
  int64_t chunk_capacity = 0;
  {
    const int64_t target = std::max<int64_t>(1, kChunkElements / GH);
    int64_t rows_in_chunk = 0;
    for (int64_t s = 0; s < steps.count; ++s) {
      const int64_t t = reverse ? steps.count - 1 - s : s;
      if (chunk_starts.empty() || rows_in_chunk >= target) {
        chunk_starts.push_back(s);
        rows_in_chunk = 0;
      }
      rows_in_chunk += steps.sizes[t];
      chunk_capacity = std::max(chunk_capacity, rows_in_chunk);
    }
    chunk_starts.push_back(steps.count);
  }
  const int64_t I = x.size(1);
  const Plan plan = plan_team<T>(steps, B, I, H, H_out, GH, projected);
  // A team that shares out the batch gives each thread a chunk buffer of its
  // own, because a thread may start the next chunk while another still
  // reads this one.
  const int64_t chunk_buffers = plan.by_batch ? plan.threads : 1;
  Tensor xg = lstm || gru ? at::empty({chunk_buffers * chunk_capacity, GH}, x.options())
                          : Tensor();
  // W_ih and W_hh transposed, with their columns in team order: each
  // thread's gate columns side by side (see own_columns below).
  Tensor w_ih_rows = at::empty({x.size(1), GH}, x.options());
  Tensor c = lstm ? copied<T>(c0) : Tensor();
  Tensor workspace = at::empty({train ? N : 0, train ? saved : 0}, x.options());
  Tensor hg = at::empty({B, GH}, x.options());
  Tensor m = projected ? at::empty({B, H}, x.options()) : Tensor();

  Tensor w_hh_rows = at::empty({H_out, GH}, x.options());
  const Tensor w_hr_rows = projected ? transposed<T>(w.w_hr) : Tensor();

  const T* x_data = x.const_data_ptr<T>();
  const T* w_ih_source = w.w_ih.const_data_ptr<T>();
  const T* w_hh_source = w.w_hh.const_data_ptr<T>();
  T* w_ih_data = w_ih_rows.mutable_data_ptr<T>();
  const T* h0_data = h0.const_data_ptr<T>();
  T* w_hh_data = w_hh_rows.mutable_data_ptr<T>();
  const T* w_hr_data = projected ? w_hr_rows.const_data_ptr<T>() : nullptr;
  T* hg_data = hg.mutable_data_ptr<T>();
  T* c_data = lstm ? c.mutable_data_ptr<T>() : nullptr;
  T* m_data = projected ? m.mutable_data_ptr<T>() : nullptr;
  T* out_data = output.mutable_data_ptr<T>();
  T* ws_data = train ? workspace.mutable_data_ptr<T>() : nullptr;
  // The pre-activations of the current chunk: row r of the chunk is packed
  // row chunk_first + r.
  T* xg_data = lstm || gru ? xg.mutable_data_ptr<T>() : out_data;
  const int64_t ld_xg = lstm || gru ? GH : H_out;

  // A step reads the state it starts from in the output rows of the step
  // before (or in h0), so the loop keeps no state buffer but c, whose units
  // each thread only reads and writes in its own slice.
  run_team(plan.threads, [&](const Team& team) {
    constexpr int64_t L = Vector<T>::kLanes;
    // A thread owns either batch entries [b0, b1) and every unit, or every
    // batch entry and units [u0, u1) (see share_batch).
    const auto [b0, b1, u0, u1, p0, p1] = plan.owned(team, steps, B, H, H_out, L);
    const int64_t units = u1 - u0;
    const bool by_batch = plan.by_batch, shared = plan.shared(team);
    const int64_t buffer_offset = by_batch ? team.index * chunk_capacity * GH : 0;
    T* const xg_buffer = lstm || gru ? xg_data + buffer_offset : out_data;
    // The columns of the products (W_ih and W_hh transposed, the input
    // projection xg and the step product hg) are in team order. The thread
    // with units [u0, u1) owns columns [G * u0, G * u1), with its gate blocks
    // side by side, units apart. Each thread fills its columns of the weights
    // and computes and reads only its own columns of xg and hg, so these need
    // no barrier, and its products run over one range of columns. With one
    // thread, or a team that shares out the batch, this is the usual order of
    // the gate blocks. The threads of such a team each fill a slice and wait
    // for the others before they read them all. The transposed weights are
    // stored in panels of four vectors of columns (see Panels). In one
    // process against one block of each thread's columns, this made the
    // forward at (50, 64, 512, 512) 1.05x to 1.35x faster for the LSTM and
    // GRU. Their rows of 1024 or 2048 floats had put the weight rows that a
    // product reads 4 or 8 KiB apart, which maps them all to one set of a
    // 32 KiB 8-way L1 cache. A layout with one block a thread and one vector
    // of padding per row, which avoids those conflicts too, was 1.22x slower
    // than the panels there. The GRU at (100, 1, 1, 32), whose 96 columns
    // make two panels, was 2% to 4% slower. Other cases stayed within noise.
    const auto [f0, f1] = team.slice(H, L);
    const int64_t own_first = G * u0, own_end = G * u1;
    const Panels<T> w_ih_panels{w_ih_data, I, own_first, own_end - own_first, 4 * L};
    const Panels<T> w_hh_panels{w_hh_data, H_out, own_first, own_end - own_first, 4 * L};
    for (int64_t gate = 0; gate < G; ++gate) {
      const int64_t column = gate * units + (f0 - u0), unit = gate * H + f0;
      w_ih_panels.fill(w_ih_source + unit * I, I, f1 - f0, column);
      w_hh_panels.fill(w_hh_source + unit * H_out, H_out, f1 - f0, column);
    }
    if (by_batch) team.sync();
    int64_t chunk = 0, chunk_first = 0;
    for (int64_t s = 0; s < steps.count; ++s) {
      const int64_t t = reverse ? steps.count - 1 - s : s;
      // Rows [0, carried) continue from the step before, the rest from h0.
      const auto [rows, offset, carried, previous_offset] = steps.part(t, reverse, b0, b1);
      if (s == chunk_starts[chunk]) {
        // The chunk's steps cover consecutive packed rows in either direction.
        const int64_t t_next = reverse ? steps.count - 1 - chunk_starts[chunk + 1]
                                       : chunk_starts[chunk + 1];
        const int64_t t_last = reverse ? t_next + 1 : t_next - 1;
        const int64_t first = std::min(steps.offsets[t], steps.offsets[t_last]);
        chunk_first = lstm || gru ? first : 0;
        // A thread that owns some batch entries projects their rows of each
        // step of the chunk; the others project every row at once.
        for (int64_t u = t; u != t_next; u += reverse ? -1 : 1) {
          const Steps::Part p = steps.part(u, reverse, b0, b1);
          const int64_t count =
              by_batch ? p.rows
                       : std::max(offset + rows, steps.offsets[t_last] + steps.sizes[t_last]) -
                             first;
          const int64_t row = by_batch ? p.offset : first;
          const Strided<T> x_rows{x_data + row * I, I, 1};
          T* target = xg_buffer + (row - chunk_first) * ld_xg + own_first;
          gemm_panels<T>(x_rows, count, w_ih_panels, target, ld_xg, false);
          if (!by_batch) break;
        }
        ++chunk;
      }
      const T* carried_data = out_data + previous_offset * H_out;
      const Strided<T> from_before{carried_data, H_out, 1};
      const Strided<T> from_h0{h0_data + (b0 + carried) * H_out, H_out, 1};
      // The other threads wrote their units of these rows, so they are not
      // in this core's cache yet. Requesting them all at once overlaps the
      // transfers (a few percent faster at 32 rows x 64 units).
      if (shared) {
        const char* base = reinterpret_cast<const char*>(carried_data);
        const int64_t bytes = carried * H_out * static_cast<int64_t>(sizeof(T));
        for (int64_t line = 0; line < bytes; line += 64) __builtin_prefetch(base + line);
      }
      T* hg_part = hg_data + b0 * GH;
      gemm_panels<T>(from_before, carried, w_hh_panels, hg_part + own_first, GH, false);
      gemm_panels<T>(from_h0, rows - carried, w_hh_panels, hg_part + carried * GH + own_first,
                     GH, false);
      if (units > 0 && rows > 0) {
        const Rows<const T> xg_rows{xg_buffer + (offset - chunk_first) * ld_xg + own_first,
                                    ld_xg};
        const Rows<const T> hg_rows{hg_part + own_first, GH};
        const Rows<T> out_rows{out_data + offset * H_out + u0, H_out};
        // Without a workspace, act is never written.
        const Rows<T> ws_rows{train ? ws_data + offset * saved + u0 : nullptr,
                              train ? saved : 0};
        if (lstm) {
          const Rows<T> c_rows{c_data + b0 * H + u0, H};
          const Rows<T> h_rows = projected ? Rows<T>{m_data + b0 * H + u0, H} : out_rows;
          if (train) {
            lstm_rows<T, true>(rows, H, units, units, xg_rows, bias + u0, hg_rows, ws_rows,
                               c_rows, h_rows);
          } else {
            lstm_rows<T, false>(rows, H, units, units, xg_rows, bias + u0, hg_rows, ws_rows,
                                c_rows, h_rows);
          }
        } else if (gru) {
          // Rows [0, carried) start from the step before, the rest from h0.
          const Rows<const T> before_rows{carried_data + u0, H_out};
          const Rows<const T> h0_rows{h0_data + (b0 + carried) * H_out + u0, H_out};
          auto run = [&](int64_t first, int64_t count, Rows<const T> h_prev) {
            if (count == 0) return;
            const Rows<const T> x{xg_rows[first], ld_xg};
            const Rows<const T> u{hg_rows[first], GH};
            const Rows<T> a{ws_rows[first], ws_rows.stride};
            const Rows<T> o{out_rows[first], H_out};
            if (train) {
              gru_rows<T, true>(count, H, units, units, x, bias + u0, u, b_hn + u0, a, h_prev,
                                o);
            } else {
              gru_rows<T, false>(count, H, units, units, x, bias + u0, u, b_hn + u0, a, h_prev,
                                 o);
            }
          };
          run(0, carried, before_rows);
          run(carried, rows - carried, h0_rows);
        } else {
          rnn_rows<T>(mode, rows, units, bias + u0, hg_rows, out_rows);
        }
      }
      if (projected) {
        // The projection reads every unit of m.
        if (shared) team.sync();
        gemm_range<T>({m_data + b0 * H, H, 1}, rows, H, w_hr_data, H_out,
                      out_data + offset * H_out, H_out, false, p0, p1);
      }
      if (shared) team.sync();
    }
  });

  // The final state of each row is the output of its last step in the
  // direction of travel, or h0 for a row that no step reaches.
  Tensor h = copied<T>(h0);
  T* h_data = h.mutable_data_ptr<T>();
  for (int64_t t = 0; t < steps.count; ++t) {
    const int64_t ends_from = reverse ? (t == 0 ? 0 : steps.sizes[t])
                                      : (t + 1 < steps.count ? steps.sizes[t + 1] : 0);
    const int64_t ends_to = steps.sizes[t];
    if (ends_to > ends_from) {
      std::memcpy(h_data + ends_from * H_out, out_data + (steps.offsets[t] + ends_from) * H_out,
                  (ends_to - ends_from) * H_out * sizeof(T));
    }
  }
  return {output, h, lstm ? c : at::empty({0}, x.options()), workspace};
}

// Backward gate arithmetic of the rows of one step, for hidden units
// [0, units) of a slice. Every pointer starts at the slice's first unit, and
// gate blocks are H apart. dh contains dL/dh_t of the rows on entry, and the
// GRU replaces it with the part of dL/dh_{t-1} that bypasses W_hh.

template <typename T>
__attribute__((noinline)) void rnn_backward_rows(Mode mode, int64_t rows, int64_t units,
                                                 Rows<const T> out, Rows<const T> dh,
                                                 Rows<T> dg) {
  for (int64_t b = 0; b < rows; ++b) {
    const T* __restrict o = out[b];
    const T* __restrict d = dh[b];
    T* __restrict g = dg[b];
    if (mode == Mode::kTanh) {
#pragma GCC ivdep
      for (int64_t j = 0; j < units; ++j) g[j] = d[j] * (T(1) - o[j] * o[j]);
    } else {
      // As in torch's relu gradient, a NaN output passes the gradient on.
#pragma GCC ivdep
      for (int64_t j = 0; j < units; ++j) g[j] = o[j] <= T(0) ? T(0) : d[j];
    }
  }
}

// With a projection, m receives o * tanh(c), the input of the projection.
template <typename T, bool kProjected>
__attribute__((noinline)) void lstm_backward_rows(int64_t rows, int64_t H, int64_t units,
                                                  Rows<const T> act, Rows<const T> c_prev,
                                                  Rows<const T> dh, Rows<T> dc, Rows<T> dg,
                                                  Rows<T> m) {
  for (int64_t b = 0; b < rows; ++b) {
    const T* __restrict a = act[b];
    const T* __restrict c = c_prev[b];
    const T* __restrict d = dh[b];
    T* __restrict dc_row = dc[b];
    T* __restrict g_row = dg[b];
    T* __restrict m_row = m[b];
#pragma GCC ivdep
    for (int64_t j = 0; j < units; ++j) {
      const T i = a[j], f = a[H + j], g = a[2 * H + j], o = a[3 * H + j];
      const T tanh_c = Math<T>::tanh(a[4 * H + j]);
      const T dc_next = dc_row[j] + d[j] * o * (T(1) - tanh_c * tanh_c);
      const T d_o = d[j] * tanh_c;
      g_row[j] = dc_next * g * i * (T(1) - i);
      g_row[H + j] = dc_next * c[j] * f * (T(1) - f);
      g_row[2 * H + j] = dc_next * i * (T(1) - g * g);
      g_row[3 * H + j] = d_o * o * (T(1) - o);
      dc_row[j] = dc_next * f;
      if (kProjected) m_row[j] = o * tanh_c;
    }
  }
}

// dg_recurrent receives the gradients of the recurrent pre-activations,
// which differ from dg in the n block by the factor r.
template <typename T>
__attribute__((noinline)) void gru_backward_rows(int64_t rows, int64_t H, int64_t units,
                                                 Rows<const T> act, Rows<const T> h_prev,
                                                 Rows<T> dh, Rows<T> dg,
                                                 Rows<T> dg_recurrent) {
  for (int64_t b = 0; b < rows; ++b) {
    const T* __restrict a = act[b];
    const T* __restrict h = h_prev[b];
    T* __restrict dh_row = dh[b];
    T* __restrict g = dg[b];
    T* __restrict gr = dg_recurrent[b];
#pragma GCC ivdep
    for (int64_t j = 0; j < units; ++j) {
      const T r = a[j], z = a[H + j], n = a[2 * H + j], hn = a[3 * H + j];
      const T d = dh_row[j];
      const T dn_pre = d * (T(1) - z) * (T(1) - n * n);
      const T dz = d * (h[j] - n);
      const T dr_pre = dn_pre * hn * r * (T(1) - r);
      const T dz_pre = dz * z * (T(1) - z);
      g[j] = dr_pre;
      g[H + j] = dz_pre;
      g[2 * H + j] = dn_pre;
      gr[j] = dr_pre;
      gr[H + j] = dz_pre;
      gr[2 * H + j] = dn_pre * r;
      dh_row[j] = d * z;
    }
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
    const int64_t rows = steps.sizes[t], offset = steps.offsets[t];
    const auto [carried, previous_offset] = steps.carry(t, reverse);
    add(offset, false, previous_offset, carried);
    add(offset + carried, true, carried, rows - carried);
  }
  for (const Segment& segment : segments) {
    const Tensor& source = segment.from_h0 ? h0 : output;
    matmul_transposed<T>(dgates.narrow(0, segment.row, segment.count),
                         source.narrow(0, segment.source_row, segment.count), grad_w_hh,
                         true);
  }
}

// sums[j] += values[j] for j < count, in double.
template <typename T>
__attribute__((noinline)) void add_to_sums(const T* __restrict values, int64_t count,
                                           double* __restrict sums) {
  for (int64_t j = 0; j < count; ++j) sums[j] += static_cast<double>(values[j]);
}

// dst[r, begin:end] += src[offset + r, begin:end] for r < rows, where src
// has strides (stride0, stride1) and dst rows are width apart. A loss such as
// output.sum() passes an expanded gradient with strides (0, 0), which is read
// in place rather than copied.
template <typename T>
void add_rows(const T* src, int64_t stride0, int64_t stride1, int64_t offset,
              int64_t rows, int64_t width, int64_t begin, int64_t end, T* __restrict dst) {
  for (int64_t r = 0; r < rows; ++r) {
    const T* g = src + (offset + r) * stride0;
    T* __restrict d = dst + r * width;
    if (stride1 == 1) {
      for (int64_t k = begin; k < end; ++k) d[k] += g[k];
    } else {
      for (int64_t k = begin; k < end; ++k) d[k] += g[k * stride1];
    }
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
  // Two buffers, so that a thread may write the next step's while another
  // still reads this one's.
  Tensor dgates_step = gru ? at::empty({2, B, GH}, x.options()) : Tensor();
  Tensor dm = projected ? at::empty({B, H}, x.options()) : Tensor();
  Tensor m = projected ? at::empty({B, H}, x.options()) : Tensor();
  Tensor grad_w_hr = projected ? at::zeros_like(w.w_hr) : at::empty({0}, x.options());

  const T* w_hh_data = w.w_hh.const_data_ptr<T>();
  const T* w_hr_data = projected ? w.w_hr.const_data_ptr<T>() : nullptr;
  T* grad_w_hr_data = projected ? grad_w_hr.mutable_data_ptr<T>() : nullptr;

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

  // Sums of the gate gradients over the packed rows, for the bias
  // gradients: every gate block on the input side, then (GRU) the n block on
  // the recurrent side, which r multiplies.
  const bool biased = w.b_ih.defined() || w.b_hh.defined();
  const int64_t sums_width = gru ? GH + H : GH;

  // The same team as the forward. Either each thread owns units [u0, u1) of
  // the gate arithmetic and columns [p0, p1) of dh (the same range without
  // a projection), and a barrier comes before the step product
  // dh = dgates @ W_hh, because it reads every gate column of the step. Or
  // each thread owns batch entries [b0, b1) and every unit, and waits for
  // no other.
  const int64_t gout_stride0 = gout_data != nullptr ? grad_output.stride(0) : 0;
  const int64_t gout_stride1 = gout_data != nullptr ? grad_output.stride(1) : 0;
  const Plan plan = plan_team<T>(steps, B, x.size(1), H, H_out, GH, projected);
  // Each thread of a team that shares out the batch sums its own rows; the
  // sums are added after the loop, in thread order.
  std::vector<double> bias_sums;
  const int64_t sum_parts = plan.by_batch ? plan.threads : 1;
  if (biased) bias_sums.assign(sum_parts * sums_width, 0.0);
  run_team(plan.threads, [&](const Team& team) {
    constexpr int64_t L = Vector<T>::kLanes;
    const auto [b0, b1, u0, u1, p0, p1] = plan.owned(team, steps, B, H, H_out, L);
    const int64_t units = u1 - u0;
    const bool shared = plan.shared(team);
    const int64_t sums_offset = plan.by_batch ? team.index * sums_width : 0;
    double* const sums = biased ? bias_sums.data() + sums_offset : nullptr;
    T* const dh_part = dh_data + b0 * H_out;
    for (int64_t s = steps.count - 1; s >= 0; --s) {
      const int64_t t = reverse ? steps.count - 1 - s : s;
      // Rows [0, carried) started from the step before, the rest from the
      // initial state.
      const auto [rows, offset, carried, before_offset] = steps.part(t, reverse, b0, b1);
      if (rows == 0 && !shared) continue;
      if (gout_data != nullptr) {
        add_rows<T>(gout_data, gout_stride0, gout_stride1, offset, rows, H_out, p0, p1,
                    dh_part);
      }
      if (projected) {
        // dm = dh @ W_hr reads every column of dh.
        if (shared) team.sync();
        gemm_range<T>({dh_part, H_out, 1}, rows, H_out, w_hr_data, H, dm_data + b0 * H, H,
                      false, u0, u1);
      }
      T* dgs_step = gru ? dgs_data + ((s % 2) * B + b0) * GH : nullptr;
      auto segment = [&](int64_t first, int64_t count, bool from_before) {
        if (count == 0 || units == 0) return;
        const int64_t row = offset + first;
        const Rows<const T> act{act_data + row * saved + u0, saved};
        const Rows<T> dg{dg_data + row * GH + u0, GH};
        if (lstm) {
          const Rows<const T> c_prev =
              from_before ? Rows<const T>{act_data + (before_offset + first) * saved + 4 * H + u0,
                                          saved}
                          : Rows<const T>{c0_data + (b0 + first) * H + u0, H};
          const Rows<T> dc{dc_data + (b0 + first) * H + u0, H};
          if (projected) {
            const Rows<T> m{m_data + (b0 + first) * H + u0, H};
            const Rows<const T> d{dm_data + (b0 + first) * H + u0, H};
            lstm_backward_rows<T, true>(count, H, units, act, c_prev, d, dc, dg, m);
          } else {
            const Rows<const T> d{dh_part + first * H_out + u0, H_out};
            lstm_backward_rows<T, false>(count, H, units, act, c_prev, d, dc, dg, {nullptr, 0});
          }
        } else if (gru) {
          const Rows<const T> h_prev =
              from_before ? Rows<const T>{out_data + (before_offset + first) * H + u0, H}
                          : Rows<const T>{h0_data + (b0 + first) * H + u0, H};
          gru_backward_rows<T>(count, H, units, act, h_prev, {dh_part + first * H + u0, H}, dg,
                               {dgs_step + first * GH + u0, GH});
        } else {
          rnn_backward_rows<T>(mode, count, units, {out_data + row * H + u0, H},
                               {dh_part + first * H + u0, H}, dg);
        }
      };
      segment(0, carried, true);
      segment(carried, rows - carried, false);
      if (biased && units > 0) {
        // The bias gradients: this thread's units of the step's gate
        // gradients, summed in double over the packed rows.
        for (int64_t b = 0; b < rows; ++b) {
          const T* dg_row = dg_data + (offset + b) * GH;
          for (int64_t gate = 0; gate < G; ++gate) {
            add_to_sums(dg_row + gate * H + u0, units, sums + gate * H + u0);
          }
          if (gru) add_to_sums(dgs_step + b * GH + 2 * H + u0, units, sums + GH + u0);
        }
      }
      if (projected && units > 0) {
        // grad_w_hr[:, u0:u1] += dh^T @ m[:, u0:u1], before the step product
        // below changes dh.
        gemm_range<T>({dh_part, 1, H_out}, H_out, rows, m_data + b0 * H, H, grad_w_hr_data, H,
                      true, u0, u1);
      }
      if (shared) team.sync();
      // The GRU's gate loop already stored d * z, the part of dL/dh_{t-1}
      // that bypasses W_hh, so its product adds to dh.
      const T* dg_recurrent = gru ? dgs_step : dg_data + offset * GH;
      gemm_range<T>({dg_recurrent, GH, 1}, rows, GH, w_hh_data, H_out, dh_part, H_out, gru,
                    p0, p1);
    }
  });

  // Input side, then (GRU) turn the n block into the recurrent side in place.
  Tensor grad_x = input_grad ? at::empty({N, x.size(1)}, x.options())
                             : at::empty({0}, x.options());
  if (input_grad) matmul<T>(dgates, w.w_ih, w.w_ih, grad_x, false);
  Tensor grad_w_ih = at::empty_like(w.w_ih);
  matmul_transposed<T>(dgates, x, grad_w_ih, false);
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

  // b_ih adds to the input side, and b_hh to the recurrent side, which for
  // the GRU differs in the n block.
  Tensor grad_b_ih = at::empty({w.b_ih.defined() ? GH : 0}, x.options());
  Tensor grad_b_hh = at::empty({w.b_hh.defined() ? GH : 0}, x.options());
  T* b_ih_grad = grad_b_ih.mutable_data_ptr<T>();
  T* b_hh_grad = grad_b_hh.mutable_data_ptr<T>();
  for (int64_t part = 1; part < sum_parts && biased; ++part) {
    for (int64_t j = 0; j < sums_width; ++j) bias_sums[j] += bias_sums[part * sums_width + j];
  }
  for (int64_t j = 0; j < GH && biased; ++j) {
    const double recurrent = gru && j >= 2 * H ? bias_sums[GH + j - 2 * H] : bias_sums[j];
    if (w.b_ih.defined()) b_ih_grad[j] = static_cast<T>(bias_sums[j]);
    if (w.b_hh.defined()) b_hh_grad[j] = static_cast<T>(recurrent);
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
  const std::pair<const char*, const Tensor*> others[] = {
      {"h0", &h0}, {"c0", &c0}, {"w_ih", &w.w_ih}, {"w_hh", &w.w_hh},
      {"b_ih", &w.b_ih}, {"b_hh", &w.b_hh}, {"w_hr", &w.w_hr}};
  for (const auto& [name, tensor] : others) {
    TORCH_CHECK(!tensor->defined() || tensor->scalar_type() == x.scalar_type(), "expected ",
                name, " of dtype ", x.scalar_type(), " like the input, got ",
                tensor->scalar_type());
  }
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

// Marks this process as a forked child (see forked), for a child forked
// before the library was loaded, which pthread_atfork cannot see.
void mark_forked() { forked = true; }

// The autograd formula of the ops, in C++ so that a training step runs no
// Python between the layer's call and the gradients.

using torch::autograd::AutogradContext;
using torch::autograd::variable_list;

std::optional<Tensor> optional_of(const Tensor& tensor) {
  return tensor.defined() ? std::optional<Tensor>(tensor) : std::nullopt;
}

// The ops below the autograd key, through the dispatcher, so that fake
// tensors (torch.compile, torch.export) reach their fake implementations.
std::tuple<Tensor, Tensor, Tensor, Tensor> call_forward(
    const Tensor& input, const Tensor& h0, const std::optional<Tensor>& c0,
    const Tensor& w_ih, const Tensor& w_hh, const std::optional<Tensor>& b_ih,
    const std::optional<Tensor>& b_hh, const std::optional<Tensor>& w_hr,
    at::IntArrayRef batch_sizes, c10::string_view mode, bool reverse, bool train) {
  static const auto op = c10::Dispatcher::singleton()
                             .findSchemaOrThrow("rnnkit::fused_rnn_forward", "")
                             .typed<decltype(fused_rnn_forward)>();
  at::AutoDispatchBelowADInplaceOrView below_autograd;
  return op.call(input, h0, c0, w_ih, w_hh, b_ih, b_hh, w_hr, batch_sizes, mode, reverse,
                 train);
}

Gradients call_backward(const std::optional<Tensor>& grad_output,
                        const std::optional<Tensor>& grad_h_n,
                        const std::optional<Tensor>& grad_c_n, const Tensor& input,
                        const Tensor& h0, const std::optional<Tensor>& c0, const Tensor& w_ih,
                        const Tensor& w_hh, const std::optional<Tensor>& b_ih,
                        const std::optional<Tensor>& b_hh, const std::optional<Tensor>& w_hr,
                        const Tensor& output, const Tensor& workspace,
                        at::IntArrayRef batch_sizes, c10::string_view mode, bool reverse,
                        bool input_grad) {
  static const auto op = c10::Dispatcher::singleton()
                             .findSchemaOrThrow("rnnkit::fused_rnn_backward", "")
                             .typed<decltype(fused_rnn_backward)>();
  at::AutoDispatchBelowADInplaceOrView below_autograd;
  return op.call(grad_output, grad_h_n, grad_c_n, input, h0, c0, w_ih, w_hh, b_ih, b_hh,
                 w_hr, output, workspace, batch_sizes, mode, reverse, input_grad);
}

class FusedRNNBackward : public torch::autograd::Function<FusedRNNBackward> {
 public:
  // Optional tensors are std::optional, because the autograd function
  // counts only defined tensors as inputs.
  static variable_list forward(AutogradContext* ctx, const std::optional<Tensor>& grad_output,
                               const std::optional<Tensor>& grad_h_n,
                               const std::optional<Tensor>& grad_c_n, const Tensor& input,
                               const Tensor& h0, const std::optional<Tensor>& c0,
                               const Tensor& w_ih, const Tensor& w_hh,
                               const std::optional<Tensor>& b_ih,
                               const std::optional<Tensor>& b_hh,
                               const std::optional<Tensor>& w_hr, const Tensor& output,
                               const Tensor& workspace, std::vector<int64_t> batch_sizes,
                               std::string mode, bool reverse, bool input_grad) {
    const auto [g_input, g_h0, g_c0, g_w_ih, g_w_hh, g_b_ih, g_b_hh, g_w_hr] =
        call_backward(grad_output, grad_h_n, grad_c_n, input, h0, c0, w_ih, w_hh, b_ih, b_hh,
                      w_hr, output, workspace, batch_sizes, mode, reverse, input_grad);
    return {g_input, g_h0, g_c0, g_w_ih, g_w_hh, g_b_ih, g_b_hh, g_w_hr};
  }

  static variable_list backward(AutogradContext* ctx, variable_list grads) {
    TORCH_CHECK(false,
                "double backward (a gradient of a gradient, such as a gradient penalty) is "
                "not supported by rnnkit's fused kernels; select the reference backend with "
                "rnnkit.set_backend('reference') or RNNKIT_BACKEND=reference");
    return {};
  }
};

class FusedRNNForward : public torch::autograd::Function<FusedRNNForward> {
 public:
  static variable_list forward(AutogradContext* ctx, const Tensor& input, const Tensor& h0,
                               const std::optional<Tensor>& c0, const Tensor& w_ih,
                               const Tensor& w_hh, const std::optional<Tensor>& b_ih,
                               const std::optional<Tensor>& b_hh,
                               const std::optional<Tensor>& w_hr,
                               std::vector<int64_t> batch_sizes, std::string mode,
                               bool reverse, bool train) {
    auto [output, h_n, c_n, workspace] = call_forward(input, h0, c0, w_ih, w_hh, b_ih, b_hh,
                                                      w_hr, batch_sizes, mode, reverse, train);
    const Tensor none;
    ctx->save_for_backward({input, h0, c0.value_or(none), w_ih, w_hh, b_ih.value_or(none),
                            b_hh.value_or(none), w_hr.value_or(none), output, workspace});
    ctx->saved_data["batch_sizes"] = batch_sizes;
    ctx->saved_data["mode"] = mode;
    ctx->saved_data["reverse"] = reverse;
    // Unused outputs (the workspace, often c_n) then get undefined
    // gradients, not zeros.
    ctx->set_materialize_grads(false);
    ctx->mark_non_differentiable({workspace});
    return {output, h_n, c_n, workspace};
  }

  static variable_list backward(AutogradContext* ctx, variable_list grads) {
    const variable_list saved = ctx->get_saved_variables();
    const auto batch_sizes = ctx->saved_data["batch_sizes"].toIntVector();
    const std::string mode = ctx->saved_data["mode"].toStringRef();
    const bool reverse = ctx->saved_data["reverse"].toBool();
    variable_list result = FusedRNNBackward::apply(
        optional_of(grads[0]), optional_of(grads[1]), optional_of(grads[2]), saved[0],
        saved[1], optional_of(saved[2]), saved[3], saved[4], optional_of(saved[5]),
        optional_of(saved[6]), optional_of(saved[7]), saved[8], saved[9], batch_sizes, mode,
        reverse, ctx->needs_input_grad(0));
    // The gradients of absent optional inputs and of the arguments that are
    // not tensors are undefined.
    for (const int index : {2, 5, 6, 7}) {
      if (!saved[index].defined()) result[index] = Tensor();
    }
    if (!ctx->needs_input_grad(0)) result[0] = Tensor();
    result.resize(12);
    return result;
  }
};

std::tuple<Tensor, Tensor, Tensor, Tensor> fused_rnn_forward_autograd(
    const Tensor& input, const Tensor& h0, const std::optional<Tensor>& c0,
    const Tensor& w_ih, const Tensor& w_hh, const std::optional<Tensor>& b_ih,
    const std::optional<Tensor>& b_hh, const std::optional<Tensor>& w_hr,
    at::IntArrayRef batch_sizes, c10::string_view mode, bool reverse, bool train) {
  const variable_list outputs =
      FusedRNNForward::apply(input, h0, c0, w_ih, w_hh, b_ih, b_hh, w_hr, batch_sizes.vec(),
                          std::string(mode), reverse, train);
  return {outputs[0], outputs[1], outputs[2], outputs[3]};
}

Gradients fused_rnn_backward_autograd(
    const std::optional<Tensor>& grad_output, const std::optional<Tensor>& grad_h_n,
    const std::optional<Tensor>& grad_c_n, const Tensor& input, const Tensor& h0,
    const std::optional<Tensor>& c0, const Tensor& w_ih, const Tensor& w_hh,
    const std::optional<Tensor>& b_ih, const std::optional<Tensor>& b_hh,
    const std::optional<Tensor>& w_hr, const Tensor& output, const Tensor& workspace,
    at::IntArrayRef batch_sizes, c10::string_view mode, bool reverse, bool input_grad) {
  const variable_list g =
      FusedRNNBackward::apply(grad_output, grad_h_n, grad_c_n, input, h0, c0, w_ih, w_hh, b_ih,
                           b_hh, w_hr, output, workspace, batch_sizes.vec(),
                           std::string(mode), reverse, input_grad);
  return {g[0], g[1], g[2], g[3], g[4], g[5], g[6], g[7]};
}

}  // namespace

TORCH_LIBRARY(rnnkit, m) {
  m.def("mark_forked() -> ()", &mark_forked);
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

TORCH_LIBRARY_IMPL(rnnkit, Autograd, m) {
  m.impl("fused_rnn_forward", &fused_rnn_forward_autograd);
  m.impl("fused_rnn_backward", &fused_rnn_backward_autograd);
}
