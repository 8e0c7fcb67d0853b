// The mixture-of-experts experts pass on a CPU: gather, expert, weighted combine, forward and backward,
// with the experts run concurrently by OpenMP threads (one expert per thread, busiest first) and the
// combine done per token, in sorted-pair order, so results do not depend on which thread ran what.
//
// Each function is the same sequence of ATen operators as the Python loop in subnets/experts/layer.py
// (_ExpertsFunction), run for the same runs of pairs and, with one thread, adding each run's outputs as it
// goes as the loop does then, so the two give bit-identical results; this one avoids that loop's
// interpreter and lock overhead per operator (the loop pays them ~20 times per expert) and starts its
// threads without waiting for torch's OpenMP threads to stop spinning. It also moves less memory than the
// loop: results read once, much later, are computed in cache and streamed out past it, the pair workspace
// is ordered by token for the combine, and scattered rows are fetched ahead of their reads.
//
// Layout: pair p (pairs sorted by expert) reads row index[p] of tokens; expert e owns pairs
// starts[e] .. starts[e+1]-1.

#include <c10/core/impl/alloc_cpu.h>
#include <c10/util/accumulate.h>
#include <torch/extension.h>

#if defined(__SSE2__)
#include <immintrin.h>
#endif

#include <algorithm>
#include <cstring>
#include <exception>
#include <limits>
#include <mutex>
#include <optional>
#include <tuple>
#include <unordered_map>
#include <vector>

namespace {

enum Kind : int64_t { kGelu = 0, kRelu = 1, kSwiglu = 2 };

// A run: up to `chunk` consecutive pairs of one expert; first and last: the expert's first and last run.
struct Run {
  int64_t expert, start, stop;
  bool first, last;
};

// The runs of each expert in the order given (busiest first), split as layer.py's _Plan.chunks splits them.
std::vector<std::vector<Run>> plan_runs(const std::vector<int64_t>& starts, const std::vector<int64_t>& order,
                                        int64_t chunk) {
  std::vector<std::vector<Run>> runs;
  for (int64_t expert : order) {
    int64_t start = starts[expert], count = starts[expert + 1] - start;
    std::vector<Run> own;
    if (count > 0) {
      int64_t pieces = (count + chunk - 1) / chunk, size = (count + pieces - 1) / pieces;
      for (int64_t begin = start; begin < start + count; begin += size)
        own.push_back({expert, begin, std::min(begin + size, start + count), begin == start,
                       begin + size >= start + count});
    }
    runs.push_back(std::move(own));
  }
  return runs;
}

// Checks that starts bounds E experts' pairs, P in all, and order names experts.
void check_layout(const at::Tensor& w_in, const at::Tensor& index, const std::vector<int64_t>& starts,
                  const std::vector<int64_t>& order) {
  const int64_t experts = w_in.size(0);
  TORCH_CHECK(static_cast<int64_t>(starts.size()) == experts + 1 && starts.front() == 0 &&
                  starts.back() == index.size(0),
              "starts must bound ", experts, " experts' pairs, ", index.size(0), " in all");
  for (size_t e = 1; e < starts.size(); ++e) TORCH_CHECK(starts[e] >= starts[e - 1], "starts must not decrease");
  for (int64_t e : order) TORCH_CHECK(e >= 0 && e < experts, "order names expert ", e, " of ", experts);
}

// The experts in the order they run: busiest first for several threads (so the last to finish is short),
// in index order for one (so adding each run's outputs as it goes sums a token's pairs in pair order).
std::vector<int64_t> in_turn(std::vector<int64_t> order, bool direct) {
  if (direct) std::sort(order.begin(), order.end());
  return order;
}

int64_t largest_run(const std::vector<std::vector<Run>>& runs) {
  int64_t largest = 1;
  for (const auto& own : runs)
    for (const auto& run : own) largest = std::max(largest, run.stop - run.start);
  return largest;
}

// Runs body(state, i) for i = 0 .. count-1 on OpenMP threads, each thread taking the next i as it frees up;
// state = make() is each thread's scratch. Rethrows the first exception once all threads are done.
template <typename Make, typename Body>
void for_each_expert(int64_t count, const Make& make, const Body& body) {
  std::exception_ptr failure;
  std::mutex lock;
  auto fail = [&]() {
    std::lock_guard<std::mutex> guard(lock);
    if (!failure) failure = std::current_exception();
  };
  const bool inference = c10::InferenceMode::is_enabled();
#pragma omp parallel
  {
    c10::InferenceMode mode(inference);  // per thread, like grad mode: each thread takes the caller's
    at::NoGradGuard no_grad;             // these threads compute inside an autograd.Function
    std::optional<decltype(make())> state;
    try {
      state.emplace(make());
    } catch (...) {
      fail();
    }
#pragma omp for schedule(dynamic, 1)
    for (int64_t i = 0; i < count; ++i) {
      if (!state.has_value()) continue;
      try {
        body(*state, i);
      } catch (...) {
        fail();
      }
    }
  }
  if (failure) std::rethrow_exception(failure);
}

constexpr int64_t kLine = 64 / sizeof(float);  // floats per cache line
constexpr int64_t kAhead = 4;                    // rows fetched ahead of the one being read

// Asks for the cache lines of width floats at row before they are read. The rows a gather reads are
// scattered, each a new stream for the hardware prefetcher; asking a few rows ahead turns each row's miss
// latency into bandwidth.
inline void fetch(const float* row, int64_t width) {
  for (int64_t c = 0; c < width; c += kLine) __builtin_prefetch(row + c);
}

// target = the rows of source named by rows, as at::index_select_out would give them (a copy, so the same
// bits), fetching rows ahead where both are contiguous float32.
void gather(const at::Tensor& source, const at::Tensor& rows, at::Tensor& target) {
  if (source.scalar_type() != at::kFloat || !source.is_contiguous() || !target.is_contiguous() ||
      rows.scalar_type() != at::kLong || !rows.is_contiguous()) {
    at::index_select_out(target, source, 0, rows);
    return;
  }
  const int64_t count = rows.size(0), width = source.size(1), limit = source.size(0);
  const int64_t* row = rows.data_ptr<int64_t>();
  const float* from = source.data_ptr<float>();
  float* to = target.data_ptr<float>();
  for (int64_t i = 0; i < count; ++i) {
    TORCH_CHECK(row[i] >= 0 && row[i] < limit, "index ", row[i], " is out of range for ", limit, " rows");
    if (i + kAhead < count && row[i + kAhead] >= 0 && row[i + kAhead] < limit)
      fetch(from + row[i + kAhead] * width, width);
    std::memcpy(to + i * width, from + row[i] * width, width * sizeof(float));
  }
}

// Results bound for memory that is read once, much later (the saved pre-activations, an expert's weight
// gradients; the pair workspace likewise, see to_slots): computing them in place would read every line in
// before writing it and push the tokens the next experts gather out of the shared cache. staged(target, buffer) says where to
// compute such a result, buffer (a scratch in cache, as large) or target itself; flush(staged, target) then
// streams it out to target with stores that skip the caches. The buffer is used only where it and target
// start at the same offset within a 64-byte line, contiguous float32: MKL's products round alike there, so
// the bits are those of a product written in place (as layer.py's loop writes it); and only for results of
// at most kStagedBytes, which stay in a core's cache (larger ones are written in place).
constexpr int64_t kStagedBytes = int64_t(1) << 20;

at::Tensor staged(const at::Tensor& target, const at::Tensor& buffer) {
  constexpr uintptr_t kAlign = 64;
  const bool same_offset = reinterpret_cast<uintptr_t>(target.data_ptr()) % kAlign ==
                           reinterpret_cast<uintptr_t>(buffer.data_ptr()) % kAlign;
  if (!same_offset || target.scalar_type() != at::kFloat || !target.is_contiguous() || !buffer.is_contiguous() ||
      buffer.numel() < target.numel() || target.numel() * static_cast<int64_t>(sizeof(float)) > kStagedBytes)
    return target;
  return buffer.view({-1}).narrow(0, 0, target.numel()).view(target.sizes());
}

// to[0 .. count) = from[0 .. count), with stores that skip the caches (a plain copy without SSE2); the
// writer calls fence() before any other thread may read to.
void stream(float* to, const float* from, int64_t count) {
#if defined(__SSE2__)
  int64_t i = 0;
  for (; i < count && reinterpret_cast<uintptr_t>(to + i) % 16 != 0; ++i) to[i] = from[i];
  for (; i + 4 <= count; i += 4) _mm_stream_ps(to + i, _mm_loadu_ps(from + i));
  for (; i < count; ++i) to[i] = from[i];
#else
  std::memcpy(to, from, count * sizeof(float));
#endif
}

// Orders the streaming stores before what follows.
inline void fence() {
#if defined(__SSE2__)
  _mm_sfence();
#endif
}

void flush(const at::Tensor& staged, const at::Tensor& target) {
  if (staged.data_ptr() == target.data_ptr()) return;
  stream(target.data_ptr<float>(), staged.data_ptr<float>(), target.numel());
  fence();
}

// An expert's gradient over its runs: the first run sets target to value, later runs add theirs.
void accumulate(const at::Tensor& target, const Run& run, const at::Tensor& value) {
  if (run.first) {
    target.copy_(value);
  } else {
    target.add_(value);
  }
}

// An expert's weight gradient over its runs, a @ b for each: the first run writes target (computed in
// buffer and streamed out where it is the expert's only run, see staged), later runs add to it.
void accumulate_product(const at::Tensor& target, const Run& run, const at::Tensor& buffer, const at::Tensor& a,
                        const at::Tensor& b) {
  at::Tensor product = run.first && run.last ? staged(target, buffer) : target;
  if (run.first) {
    at::mm_out(product, a, b);
  } else {
    product.addmm_(a, b);
  }
  flush(product, target);
}

// Where each pair's output goes in a workspace ordered by token: token t's pairs, in pair order, fill rows
// offsets[t] .. offsets[t+1]-1, pair p row slot[p]. Written row by row as the experts finish, such a
// workspace is read by the combine from start to end, which the hardware prefetcher follows (the pairs'
// own order scatters each token's rows over k of E expert blocks).
struct Slots {
  std::vector<int64_t> offsets, slot;

  Slots(const at::Tensor& index, int64_t tokens) : offsets(tokens + 1, 0), slot(index.size(0)) {
    TORCH_CHECK(index.scalar_type() == at::kLong && index.is_contiguous(), "index must be contiguous int64");
    const int64_t* row_of = index.data_ptr<int64_t>();
    const int64_t count = index.size(0);
    for (int64_t p = 0; p < count; ++p) {
      TORCH_CHECK(row_of[p] >= 0 && row_of[p] < tokens, "index ", row_of[p], " is out of range for ", tokens,
                  " rows");
      ++offsets[row_of[p] + 1];
    }
    for (int64_t t = 0; t < tokens; ++t) offsets[t + 1] += offsets[t];
    std::vector<int64_t> next(offsets.begin(), offsets.end() - 1);
    for (int64_t p = 0; p < count; ++p) slot[p] = next[row_of[p]]++;
  }
};

// Streams rows 0 .. n-1 of rows (n, width) to the workspace rows of pairs first .. first+n-1.
void to_slots(const at::Tensor& rows, const Slots& slots, int64_t first, const at::Tensor& workspace) {
  const int64_t n = rows.size(0), width = rows.size(1);
  const float* from = rows.data_ptr<float>();
  float* to = workspace.data_ptr<float>();
  for (int64_t i = 0; i < n; ++i) stream(to + slots.slot[first + i] * width, from + i * width, width);
  fence();
}

// out[t] = the sum of token t's rows of the workspace, added in order (pair order: the order of layer.py's
// index_add_); a token without pairs gets zeros. Parallel over tokens, so the same for any number of threads.
void combine(const at::Tensor& workspace, const Slots& slots, at::Tensor& out) {
  TORCH_CHECK(workspace.scalar_type() == at::kFloat && workspace.is_contiguous(), "workspace must be contiguous "
              "float32");
  const int64_t tokens = out.size(0), width = out.size(1);
  const float* source = workspace.data_ptr<float>();
  float* target = out.data_ptr<float>();
  at::parallel_for(0, tokens, 64, [&](int64_t begin, int64_t end) {
    std::vector<float> sum(width);  // a token's row is summed here, in cache, and then streamed out
    float* row = sum.data();
    for (int64_t t = begin; t < end; ++t) {
      std::fill(row, row + width, 0.0f);
      for (int64_t q = slots.offsets[t]; q < slots.offsets[t + 1]; ++q) {
        const float* add = source + q * width;
        for (int64_t c = 0; c < width; ++c) row[c] += add[c];
      }
      stream(target + t * width, row, width);
    }
    fence();
  });
}

// out = the expert's activation of its pre-activation hidden; for SwiGLU, silu (if defined) receives silu(gate).
void activate(Kind kind, const at::Tensor& hidden, at::Tensor& out, at::Tensor* silu = nullptr) {
  if (kind == kSwiglu) {
    const int64_t width = hidden.size(1) / 2;
    at::Tensor gate = hidden.narrow(1, 0, width), up = hidden.narrow(1, width, width);
    at::Tensor& target = silu == nullptr ? out : *silu;
    at::silu_out(target, gate);
    at::mul_out(out, target, up);
  } else if (kind == kGelu) {
    at::gelu_out(out, hidden);
  } else {
    at::clamp_out(out, hidden, at::Scalar(0), std::nullopt);
  }
}

// A (rows, width) scratch tensor of like's dtype in slot `slot` of this thread's set, kept from call to call
// (a fresh one of a few hundred kB costs a page fault per 4 kB page on every call); its contents are undefined.
at::Tensor scratch(size_t slot, int64_t rows, int64_t width, const at::Tensor& like) {
  thread_local std::vector<at::Tensor> held;
  width = std::max<int64_t>(width, 1);
  if (held.size() <= slot) held.resize(slot + 1);
  at::Tensor& tensor = held[slot];
  if (!tensor.defined() || tensor.scalar_type() != like.scalar_type() || tensor.numel() < rows * width) {
    c10::InferenceMode normal(false);  // an inference tensor could not be written outside inference mode later
    tensor = at::empty({rows * width}, like.options());
  }
  return tensor.narrow(0, 0, rows * width).view({rows, width});
}

// Scratch for staging one expert's (rows, width) weight gradient, if small enough to be staged (else a stub).
at::Tensor weight_scratch(size_t slot, int64_t rows, int64_t width, const at::Tensor& like) {
  const bool small = rows * width * static_cast<int64_t>(sizeof(float)) <= kStagedBytes;
  return small ? scratch(slot, rows, width, like) : scratch(slot, 1, 1, like);
}

// Large gradient buffers kept when freed, for the next backward pass to take. A parameter's gradient is a new
// tensor every step once the optimiser sets it to None; above glibc's mmap threshold (32 MB at most) each one
// comes from the kernel as fresh pages, and faulting tens of MB in costs several milliseconds a step. Buffers
// of one size are reused; at most kPoolLimit bytes are held.
class BufferPool {
 public:
  static BufferPool& instance() {
    static BufferPool* pool = new BufferPool();  // never destroyed: tensors may outlive static destruction
    return *pool;
  }

  at::Tensor empty(at::IntArrayRef sizes, const at::TensorOptions& options) {
    const size_t bytes = static_cast<size_t>(c10::multiply_integers(sizes)) * options.dtype().itemsize();
    if (bytes < kPooledFrom) return at::empty(sizes, options);
    void* data = take(bytes);
    if (data == nullptr) data = c10::alloc_cpu(bytes);
    return at::from_blob(data, sizes, [this, bytes](void* held) { give(held, bytes); }, options);
  }

 private:
  static constexpr size_t kPooledFrom = size_t(1) << 22;  // 4 MB: glibc keeps smaller blocks itself
  static constexpr size_t kPoolLimit = size_t(1) << 30;

  void* take(size_t bytes) {
    std::lock_guard<std::mutex> guard(lock_);
    auto found = free_.find(bytes);
    if (found == free_.end() || found->second.empty()) return nullptr;
    void* data = found->second.back();
    found->second.pop_back();
    held_ -= bytes;
    return data;
  }

  void give(void* data, size_t bytes) {
    std::lock_guard<std::mutex> guard(lock_);
    if (held_ + bytes > kPoolLimit) {
      c10::free_cpu(data);
      return;
    }
    free_[bytes].push_back(data);
    held_ += bytes;
  }

  std::mutex lock_;
  std::unordered_map<size_t, std::vector<void*>> free_;
  size_t held_ = 0;
};

}  // namespace

// The forward pass: returns the combined result (T, O); writes pre-activations into saved (P, W) if defined.
// With direct (one thread at work, as layer.py's loop decides) the experts run in order and each run's
// outputs are added into their tokens' rows at once, while in cache; else each pair's output goes to its
// row of outputs (P, O), ordered by token (Slots), and the combine adds them up at the end.
at::Tensor experts_forward(const at::Tensor& tokens, const std::optional<at::Tensor>& weights, const at::Tensor& w_in,
                           const at::Tensor& w_out, const std::optional<at::Tensor>& b_in,
                           const std::optional<at::Tensor>& b_out, const at::Tensor& index,
                           const std::vector<int64_t>& starts, const std::vector<int64_t>& order, int64_t kind_id,
                           int64_t chunk, const std::optional<at::Tensor>& saved, bool direct,
                           const std::optional<at::Tensor>& outputs) {
  const Kind kind = static_cast<Kind>(kind_id);
  const int64_t dim = tokens.size(1), width = w_in.size(2), hidden_width = w_out.size(1), out_width = w_out.size(2);
  check_layout(w_in, index, starts, order);
  TORCH_CHECK(direct || outputs.has_value(), "outputs are needed unless direct");
  const bool scale_activated = weights.has_value() && !b_out.has_value() && hidden_width < out_width;
  std::optional<Slots> slots;
  if (!direct) slots.emplace(index.contiguous(), tokens.size(0));
  const auto runs = plan_runs(starts, in_turn(order, direct), chunk);
  const int64_t largest = largest_run(runs);
  at::Tensor result = direct ? at::zeros({tokens.size(0), out_width}, tokens.options())
                             : at::empty({tokens.size(0), out_width}, tokens.options());
  auto make = [&]() {
    return std::vector<at::Tensor>{scratch(0, largest, dim, tokens), scratch(1, largest, width, tokens),
                                   scratch(2, largest, hidden_width, tokens),
                                   scratch(9, largest, out_width, tokens)};
  };
  for_each_expert(static_cast<int64_t>(runs.size()), make, [&](std::vector<at::Tensor>& buffers, int64_t i) {
    const at::Tensor &x_buffer = buffers[0], &hidden_buffer = buffers[1], &activated_buffer = buffers[2];
    const at::Tensor& output_buffer = buffers[3];
    for (const Run& run : runs[i]) {
      const int64_t n = run.stop - run.start, e = run.expert;
      at::Tensor rows = index.narrow(0, run.start, n);
      at::Tensor x = x_buffer.narrow(0, 0, n);
      gather(tokens, rows, x);
      std::optional<at::Tensor> keep;
      if (saved.has_value()) keep = saved->narrow(0, run.start, n);
      at::Tensor hidden = keep.has_value() ? staged(*keep, hidden_buffer) : hidden_buffer.narrow(0, 0, n);
      at::mm_out(hidden, x, w_in[e]);
      if (b_in.has_value()) hidden.add_((*b_in)[e]);
      if (keep.has_value()) flush(hidden, *keep);
      at::Tensor activated = activated_buffer.narrow(0, 0, n);
      activate(kind, hidden, activated);
      if (scale_activated) activated.mul_(weights->narrow(0, run.start, n).unsqueeze(1));
      at::Tensor output = output_buffer.narrow(0, 0, n);
      at::mm_out(output, activated, w_out[e]);
      if (b_out.has_value()) output.add_((*b_out)[e]);
      if (weights.has_value() && !scale_activated) output.mul_(weights->narrow(0, run.start, n).unsqueeze(1));
      if (direct) {
        result.index_add_(0, rows, output);
      } else {
        to_slots(output, *slots, run.start, *outputs);
      }
    }
  });
  if (!direct) combine(*outputs, *slots, result);
  return result;
}

// The backward pass: gradients for tokens (if need_tokens), weights (if defined and need_weights), w_in, w_out,
// b_in, b_out (if defined), as layer.py's _ExpertsFunction.backward computes them.
std::vector<std::optional<at::Tensor>> experts_backward(
    const at::Tensor& grad_result, const at::Tensor& tokens, const std::optional<at::Tensor>& weights,
    const at::Tensor& w_in, const at::Tensor& w_out, const std::optional<at::Tensor>& b_in,
    const std::optional<at::Tensor>& b_out, const at::Tensor& saved, const at::Tensor& index,
    const std::vector<int64_t>& starts, const std::vector<int64_t>& order, int64_t kind_id, int64_t chunk,
    bool need_tokens, bool need_weights, bool direct, const std::optional<at::Tensor>& grad_pairs) {
  const Kind kind = static_cast<Kind>(kind_id);
  const int64_t dim = tokens.size(1), width = w_in.size(2), hidden_width = w_out.size(1), out_width = w_out.size(2);
  check_layout(w_in, index, starts, order);
  const int64_t experts = w_in.size(0);
  std::optional<at::Tensor> grad_weights, grad_b_in, grad_b_out;
  if (weights.has_value() && need_weights) grad_weights = at::empty_like(*weights);
  BufferPool& pool = BufferPool::instance();
  at::Tensor grad_w_in = pool.empty(w_in.sizes(), w_in.options());
  at::Tensor grad_w_out = pool.empty(w_out.sizes(), w_out.options());
  if (b_in.has_value()) grad_b_in = at::empty_like(*b_in);
  if (b_out.has_value()) grad_b_out = at::empty_like(*b_out);
  for (int64_t e = 0; e < experts; ++e) {
    if (starts[e + 1] == starts[e]) {  // an expert without tokens gets a zero gradient
      grad_w_in[e].zero_();
      grad_w_out[e].zero_();
      if (grad_b_in.has_value()) (*grad_b_in)[e].zero_();
      if (grad_b_out.has_value()) (*grad_b_out)[e].zero_();
    }
  }
  const bool scale_activated = hidden_width <= out_width;  // scale the narrower factor of the w_out gradient
  TORCH_CHECK(direct || !need_tokens || grad_pairs.has_value(), "grad_pairs are needed unless direct");
  std::optional<Slots> slots;
  if (need_tokens && !direct) slots.emplace(index.contiguous(), tokens.size(0));
  const auto runs = plan_runs(starts, in_turn(order, direct), chunk);
  const int64_t largest = largest_run(runs);
  std::optional<at::Tensor> grad_tokens;
  if (need_tokens) grad_tokens = direct ? at::zeros_like(tokens) : at::empty_like(tokens);
  auto make = [&]() {
    return std::vector<at::Tensor>{scratch(3, largest, out_width, tokens),
                                   scratch(4, largest, hidden_width, tokens),
                                   scratch(5, largest, kind == kSwiglu ? hidden_width : 0, tokens),
                                   scratch(6, largest, hidden_width, tokens),
                                   scratch(7, largest, hidden_width, tokens),
                                   scratch(8, largest, width, tokens),
                                   scratch(0, largest, dim, tokens),
                                   scratch(10, need_tokens ? largest : 1, dim, tokens),
                                   weight_scratch(11, dim, width, tokens),
                                   weight_scratch(12, hidden_width, out_width, tokens)};
  };
  for_each_expert(static_cast<int64_t>(runs.size()), make, [&](std::vector<at::Tensor>& buffers, int64_t i) {
    const at::Tensor &grad_output_buffer = buffers[0], &activated_buffer = buffers[1], &silu_buffer = buffers[2];
    const at::Tensor &grad_activated_buffer = buffers[3], &product_buffer = buffers[4];
    const at::Tensor &grad_hidden_buffer = buffers[5], &x_buffer = buffers[6], &grad_x_buffer = buffers[7];
    const at::Tensor &grad_w_in_buffer = buffers[8], &grad_w_out_buffer = buffers[9];
    for (const Run& run : runs[i]) {
      const int64_t n = run.stop - run.start, e = run.expert;
      at::Tensor rows = index.narrow(0, run.start, n);
      at::Tensor grad_output = grad_output_buffer.narrow(0, 0, n);
      gather(grad_result, rows, grad_output);
      at::Tensor hidden = saved.narrow(0, run.start, n);
      at::Tensor activated = activated_buffer.narrow(0, 0, n), silu = silu_buffer.narrow(0, 0, n);
      activate(kind, hidden, activated, &silu);
      at::Tensor grad_activated = grad_activated_buffer.narrow(0, 0, n);
      at::mm_out(grad_activated, grad_output, w_out[e].t());
      if (grad_weights.has_value()) {  // d/dw of w * output: <grad_output, output> = <grad_activated, activated>
        at::Tensor product = product_buffer.narrow(0, 0, n);
        at::mul_out(product, grad_activated, activated);
        at::Tensor target = grad_weights->narrow(0, run.start, n);
        at::sum_out(target, product, at::IntArrayRef{-1});
        if (b_out.has_value()) target.add_(at::mv(grad_output, (*b_out)[e]));
      }
      std::optional<at::Tensor> scale;
      if (weights.has_value()) {
        scale = weights->narrow(0, run.start, n);
        grad_activated.mul_(scale->unsqueeze(1));
        (scale_activated ? activated : grad_output).mul_(scale->unsqueeze(1));
      }
      accumulate_product(grad_w_out[e], run, grad_w_out_buffer, activated.t(), grad_output);
      if (grad_b_out.has_value()) {
        accumulate((*grad_b_out)[e], run,
                   scale.has_value() && scale_activated ? at::mv(grad_output.t(), *scale) : grad_output.sum(0));
      }
      at::Tensor grad_hidden = grad_hidden_buffer.narrow(0, 0, n);
      if (kind == kSwiglu) {
        at::Tensor gate = hidden.narrow(1, 0, hidden_width), up = hidden.narrow(1, hidden_width, hidden_width);
        at::Tensor product = product_buffer.narrow(0, 0, n);
        at::mul_out(product, grad_activated, up);
        at::Tensor grad_gate = grad_hidden.narrow(1, 0, hidden_width);
        at::silu_backward_out(grad_gate, product, gate);
        at::Tensor grad_up = grad_hidden.narrow(1, hidden_width, hidden_width);
        at::mul_out(grad_up, grad_activated, silu);
      } else if (kind == kGelu) {
        at::gelu_backward_out(grad_hidden, grad_activated, hidden);
      } else {
        at::threshold_backward_out(grad_hidden, grad_activated, hidden, 0);
      }
      if (grad_b_in.has_value()) accumulate((*grad_b_in)[e], run, grad_hidden.sum(0));
      at::Tensor x = x_buffer.narrow(0, 0, n);
      gather(tokens, rows, x);
      accumulate_product(grad_w_in[e], run, grad_w_in_buffer, x.t(), grad_hidden);
      if (need_tokens) {
        at::Tensor grad_x = grad_x_buffer.narrow(0, 0, n);
        at::mm_out(grad_x, grad_hidden, w_in[e].t());
        if (direct) {
          grad_tokens->index_add_(0, rows, grad_x);
        } else {
          to_slots(grad_x, *slots, run.start, *grad_pairs);
        }
      }
    }
  });
  if (need_tokens && !direct) combine(*grad_pairs, *slots, *grad_tokens);
  return {grad_tokens, grad_weights, grad_w_in, grad_w_out, grad_b_in, grad_b_out};
}

// The largest of v[0 .. n) (-inf for n = 0); v holds no NaN.
float largest(const float* v, int64_t n) {
  float best = -std::numeric_limits<float>::infinity();
  int64_t i = 0;
#if defined(__SSE2__)
  __m128 lanes = _mm_set1_ps(best);
  for (; i + 4 <= n; i += 4) lanes = _mm_max_ps(lanes, _mm_loadu_ps(v + i));
  alignas(16) float held[4];
  _mm_store_ps(held, lanes);
  best = std::max(std::max(held[0], held[1]), std::max(held[2], held[3]));
#endif
  for (; i < n; ++i) best = std::max(best, v[i]);
  return best;
}

// The k largest entries of each row of scores (T, N) + bias (N, if given), largest first; of equal values the
// lower index first; NaN counts as -inf. The sum is rounded to float32 as torch's scores + bias
// would be. Each of the k picks is one vector pass for the largest value left and a scan for its first
// index: no data-dependent branches in the passes (an insertion into a sorted list mispredicts about
// k ln(N / k) times a row, for random scores, and took twice as long).
at::Tensor top_k(const at::Tensor& scores, const std::optional<at::Tensor>& bias, int64_t k) {
  TORCH_CHECK(scores.scalar_type() == at::kFloat && scores.dim() == 2, "scores must be a float32 matrix");
  TORCH_CHECK(k >= 1 && k <= scores.size(1), "k must be between 1 and ", scores.size(1), ", got ", k);
  const at::Tensor values = scores.contiguous();
  const int64_t rows = values.size(0), n = values.size(1);
  std::vector<float> shift(n, 0.0f);
  if (bias.has_value()) {
    const at::Tensor b = bias->to(at::kFloat).contiguous();
    TORCH_CHECK(b.numel() == n, "bias must have ", n, " entries, got ", b.numel());
    std::copy(b.data_ptr<float>(), b.data_ptr<float>() + n, shift.begin());
  }
  at::Tensor chosen = at::empty({rows, k}, values.options().dtype(at::kLong));
  const float* score = values.data_ptr<float>();
  int64_t* pick = chosen.data_ptr<int64_t>();
  constexpr float kNone = -std::numeric_limits<float>::infinity();
  at::parallel_for(0, rows, 64, [&](int64_t begin, int64_t end) {
    std::vector<float> left(n);        // a row's values not yet picked (picked ones: -inf)
    std::vector<char> taken(n, 0);
    for (int64_t t = begin; t < end; ++t) {
      const float* row = score + t * n;
      int64_t* out = pick + t * k;
      for (int64_t i = 0; i < n; ++i) {
        const float value = row[i] + shift[i];
        left[i] = value != value ? kNone : value;
      }
      for (int64_t j = 0; j < k; ++j) {
        const float best = largest(left.data(), n);
        int64_t i = 0;
        while (left[i] != best || taken[i]) ++i;  // found: best is one of the values not yet taken
        out[j] = i;
        taken[i] = 1;
        left[i] = kNone;
      }
      for (int64_t j = 0; j < k; ++j) taken[out[j]] = 0;
    }
  });
  return chosen;
}

// The dispatch of a routing decision: experts (T, k) int64 holds each token's choices, those >= num_experts
// being null experts. Returns the kept pairs (flat ids t * k + j) sorted by expert, in token order within each
// expert; each expert's pair count; and the (T, k) mask of kept choices. With capacity >= 0 each expert keeps
// its first `capacity` pairs in token order and drops the rest.
std::tuple<at::Tensor, std::vector<int64_t>, at::Tensor> dispatch(const at::Tensor& experts, int64_t num_experts,
                                                                  int64_t capacity) {
  TORCH_CHECK(experts.scalar_type() == at::kLong && experts.dim() == 2, "experts must be an int64 matrix");
  const at::Tensor choices = experts.contiguous();
  const int64_t pairs = choices.numel();
  const int64_t* expert_of = choices.data_ptr<int64_t>();
  std::vector<int64_t> counts(num_experts, 0);
  for (int64_t f = 0; f < pairs; ++f) {
    TORCH_CHECK(expert_of[f] >= 0, "expert ids must be non-negative, got ", expert_of[f]);
    if (expert_of[f] < num_experts) ++counts[expert_of[f]];
  }
  if (capacity >= 0)
    for (auto& count : counts) count = std::min(count, capacity);
  std::vector<int64_t> next(num_experts, 0);
  for (int64_t e = 1; e < num_experts; ++e) next[e] = next[e - 1] + counts[e - 1];
  const int64_t kept_pairs = num_experts ? next[num_experts - 1] + counts[num_experts - 1] : 0;
  std::vector<int64_t> ends(num_experts);
  for (int64_t e = 0; e < num_experts; ++e) ends[e] = next[e] + counts[e];
  at::Tensor order = at::empty({kept_pairs}, choices.options());
  at::Tensor kept = at::zeros(choices.sizes(), choices.options().dtype(at::kBool));
  int64_t* out = order.data_ptr<int64_t>();
  bool* keep = kept.data_ptr<bool>();
  for (int64_t f = 0; f < pairs; ++f) {
    const int64_t e = expert_of[f];
    if (e < num_experts && next[e] < ends[e]) {
      out[next[e]++] = f;
      keep[f] = true;
    }
  }
  return {order, counts, kept};
}

PYBIND11_MODULE(TORCH_EXTENSION_NAME, module) {
  module.def("experts_forward", &experts_forward, "MoE experts forward on a CPU");
  module.def("experts_backward", &experts_backward, "MoE experts backward on a CPU");
  module.def("dispatch", &dispatch, "pairs sorted by expert, with capacity dropping");
  module.def("top_k", &top_k, "row-wise top-k indices of a float32 matrix plus a bias");
}
