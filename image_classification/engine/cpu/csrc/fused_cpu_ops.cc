// Fused CPU kernels for the ops where Paddle's CPU build lags far behind
// PyTorch's.  Each is one pass over its data where Paddle chains several ops,
// with the weight / bias gradients accumulated per thread rather than by
// Paddle's slow column reductions.  Forward + backward, 2 threads, batch 32:
//   LayerNorm, ViT-S activation:            Paddle 40 ms, PyTorch 10, here 10;
//   exact GELU, ViT-S MLP hidden:           Paddle 55 ms, PyTorch 57, here 34;
//   3x3 depthwise conv on tokens, VVT-tiny: Paddle 1,807 ms (NCHW, plus transposes), here 213;
//   PerViT's peripheral attention weights:  Paddle 198 ms, here 16;
//   attention's softmax(scale * q k^T), PiT-S stage 1: Paddle 158 ms, here 58 (in place);
//   Linear with bias, PiT-S stage-1 qkv: 86 ms with the bias by GEMM, here 72 (70 without bias);
//   GELU then Linear (an MLP's second half) keeping only the GELU's input, see GeluLinearForward;
//   PiT-S's first pooling conv (3x3 depthwise, stride 2, x2 channels): Paddle 132 ms, here 44;
//   attention, PiT-S stage 1 (N = 730): forward 132 ms unfused, PyTorch 114, here 102-110;
//     forward + backward 358 ms with the fused softmax (and the 204 MB score matrix kept), here 305-324;
//   exact GELU without gradients, PiT-S stage-1 MLP: Paddle 25 ms, PyTorch 33, here 13;
//   dense conv without gradients, PiT-S patch embedding: Paddle 60-107 ms, PyTorch 45-50, here 43-51;
//     VVT-tiny's 7x7 stem: Paddle 106-136 ms, here 28-31; with gradients, see ConvBackward.
// erf and exp are written as plain arithmetic so that the compiler vectorises the
// loops (a libm call per element would keep them scalar; built with -fno-trapping-math).
//
// float32 only; engine/cpu/build.py compiles this file on first use, and the
// engine's layers fall back to Paddle's own ops for anything else (other dtypes,
// GPU, traced graphs but those of an export with --cpu_kernels).
#include <omp.h>

#include <algorithm>
#include <cmath>
#include <cstdint>
#include <cstring>
#include <vector>

#include "paddle/extension.h"

namespace {

int thread_count(int64_t requested) {
  return requested > 0 ? static_cast<int>(requested) : omp_get_max_threads();
}

void check_float32(const paddle::Tensor& t, const char* name) {
  PD_CHECK(t.is_cpu(), name, " must be on the CPU");
  PD_CHECK(t.dtype() == paddle::DataType::FLOAT32, name, " must be float32");
}

// The weight / bias gradients are accumulated per thread into `partial`, `workers`
// rows of equal length; their sum, one row.
std::vector<float> sum_over_threads(const std::vector<float>& partial, int workers) {
  const size_t span = partial.size() / workers;
  std::vector<float> total(partial.begin(), partial.begin() + span);
  for (size_t t = 1; t < static_cast<size_t>(workers); ++t)
    for (size_t i = 0; i < span; ++i) total[i] += partial[t * span + i];
  return total;
}

// A float32 CPU tensor of `shape` holding `values` (as many as the shape has elements).
paddle::Tensor tensor_of(const float* values, const std::vector<int64_t>& shape) {
  auto t = paddle::empty(shape, paddle::DataType::FLOAT32, paddle::CPUPlace());
  std::copy(values, values + t.numel(), t.data<float>());
  return t;
}

// e^x, relative error below 2e-7: x = n ln2 + r with |r| <= ln2 / 2, e^r from its
// degree-7 Taylor polynomial, 2^n written into the exponent bits.  0 below -87.
inline float exp_approx(float x) {
  const float c = x < -87.f ? -87.f : (x > 88.f ? 88.f : x);
  const float n = std::floor(c * 1.44269504f + 0.5f);
  const float r = (c - n * 0.693145752f) - n * 1.42860677e-6f;  // ln2 split in two
  float p = 1.f / 5040;
  p = p * r + 1.f / 720;
  p = p * r + 1.f / 120;
  p = p * r + 1.f / 24;
  p = p * r + 1.f / 6;
  p = p * r + 0.5f;
  p = p * r + 1.f;
  p = p * r + 1.f;
  const int32_t bits = (static_cast<int32_t>(n) + 127) << 23;
  float two_to_n;
  std::memcpy(&two_to_n, &bits, sizeof(two_to_n));
  return x < -87.f ? 0.f : p * two_to_n;
}

// Phi(x) = P(X <= x), X ~ N(0, 1), from the Chebyshev fit of erfc in Numerical
// Recipes (fractional error below 1.2e-7 for every argument).  It keeps its
// relative accuracy in the far left tail, where 1 + erf(x / sqrt 2) cancels.
inline float normal_cdf(float x) {
  const float z = std::fabs(x) * 0.707106781f;
  const float t = 1.f / (1.f + 0.5f * z);
  float p = 0.17087277f;
  p = p * t - 0.82215223f;
  p = p * t + 1.48851587f;
  p = p * t - 1.13520398f;
  p = p * t + 0.27886807f;
  p = p * t - 0.18628806f;
  p = p * t + 0.09678418f;
  p = p * t + 0.37409196f;
  p = p * t + 1.00002368f;
  p = p * t - 1.26551223f;
  const float half_erfc = 0.5f * t * exp_approx(p - z * z);
  return x >= 0.f ? 1.f - half_erfc : half_erfc;
}

constexpr float kInvSqrt2Pi = 0.398942280f;

}  // namespace

// y = (x - mean) * rstd * weight + bias per row of the last axis; mean and rstd
// are kept for the backward pass (one float each per row).
std::vector<paddle::Tensor> LayerNormForward(const paddle::Tensor& x, const paddle::Tensor& weight,
                                             const paddle::Tensor& bias, float epsilon,
                                             int64_t threads) {
  check_float32(x, "x");
  const int64_t C = x.shape().back(), M = C ? x.numel() / C : 0;
  PD_CHECK(weight.numel() == C && bias.numel() == C, "weight and bias must have ", C, " elements");
  auto out = paddle::empty(x.shape(), x.dtype(), x.place());
  auto mean = paddle::empty({M}, x.dtype(), x.place());
  auto rstd = paddle::empty({M}, x.dtype(), x.place());
  const float *X = x.data<float>(), *W = weight.data<float>(), *B = bias.data<float>();
  float *Y = out.data<float>(), *MU = mean.data<float>(), *RS = rstd.data<float>();
#pragma omp parallel for schedule(static) num_threads(thread_count(threads))
  for (int64_t i = 0; i < M; ++i) {
    const float* xr = X + i * C;
    float sum = 0.f;
#pragma omp simd reduction(+ : sum)
    for (int64_t j = 0; j < C; ++j) sum += xr[j];
    const float mu = sum / C;
    float sq = 0.f;  // two passes, as Paddle's kernel: no cancellation for large means
#pragma omp simd reduction(+ : sq)
    for (int64_t j = 0; j < C; ++j) sq += (xr[j] - mu) * (xr[j] - mu);
    const float r = 1.f / std::sqrt(sq / C + epsilon);
    float* yr = Y + i * C;
#pragma omp simd
    for (int64_t j = 0; j < C; ++j) yr[j] = (xr[j] - mu) * r * W[j] + B[j];
    MU[i] = mu;
    RS[i] = r;
  }
  return {out, mean, rstd};
}

// With xhat = (x - mean) * rstd and g = dy * weight, per row:
//   dx = rstd * (g - mean(g) - xhat * mean(g * xhat)),
// and over all rows dweight = sum(dy * xhat), dbias = sum(dy).
std::vector<paddle::Tensor> LayerNormBackward(const paddle::Tensor& x, const paddle::Tensor& weight,
                                              const paddle::Tensor& mean, const paddle::Tensor& rstd,
                                              const paddle::Tensor& grad_out, int64_t threads) {
  check_float32(grad_out, "grad_out");
  const int64_t C = x.shape().back(), M = C ? x.numel() / C : 0;
  const int workers = thread_count(threads);
  std::vector<float> partial(static_cast<size_t>(workers) * 2 * C, 0.f);  // [thread][dweight | dbias]
  auto grad_x = paddle::empty(x.shape(), x.dtype(), x.place());
  const float *X = x.data<float>(), *W = weight.data<float>(), *MU = mean.data<float>(),
              *RS = rstd.data<float>(), *DY = grad_out.data<float>();
  float* DX = grad_x.data<float>();
#pragma omp parallel num_threads(workers)
  {
    float* dw = partial.data() + static_cast<size_t>(omp_get_thread_num()) * 2 * C;
    float* db = dw + C;
#pragma omp for schedule(static)
    for (int64_t i = 0; i < M; ++i) {
      const float *xr = X + i * C, *dyr = DY + i * C;
      const float mu = MU[i], r = RS[i];
      float sum_g = 0.f, sum_g_xhat = 0.f;
#pragma omp simd reduction(+ : sum_g, sum_g_xhat)
      for (int64_t j = 0; j < C; ++j) {
        const float xhat = (xr[j] - mu) * r, g = dyr[j] * W[j];
        sum_g += g;
        sum_g_xhat += g * xhat;
        dw[j] += dyr[j] * xhat;
        db[j] += dyr[j];
      }
      const float mean_g = sum_g / C, mean_g_xhat = sum_g_xhat / C;
      float* dxr = DX + i * C;
#pragma omp simd
      for (int64_t j = 0; j < C; ++j)
        dxr[j] = r * (dyr[j] * W[j] - mean_g - (xr[j] - mu) * r * mean_g_xhat);
    }
  }
  const std::vector<float> total = sum_over_threads(partial, workers);
  return {grad_x, tensor_of(total.data(), {C}), tensor_of(total.data() + C, {C})};
}

std::vector<std::vector<int64_t>> LayerNormShapes(const std::vector<int64_t>& x,
                                                  const std::vector<int64_t>& weight,
                                                  const std::vector<int64_t>& bias) {
  int64_t rows = 1;   // -1 when a size is known only at run time (a traced graph's batch)
  for (size_t i = 0; i + 1 < x.size() && rows > 0; ++i) rows = x[i] < 0 ? -1 : rows * x[i];
  return {x, {rows}, {rows}};
}

std::vector<paddle::DataType> LayerNormDtypes(const paddle::DataType& x, const paddle::DataType& weight,
                                              const paddle::DataType& bias) {
  return {x, x, x};
}

// y = x * Phi(x), GELU without the tanh approximation.
std::vector<paddle::Tensor> GeluForward(const paddle::Tensor& x, int64_t threads) {
  check_float32(x, "x");
  auto out = paddle::empty(x.shape(), x.dtype(), x.place());
  const float* X = x.data<float>();
  float* Y = out.data<float>();
  const int64_t n = x.numel();
#pragma omp parallel for simd schedule(static) num_threads(thread_count(threads))
  for (int64_t i = 0; i < n; ++i) Y[i] = X[i] * normal_cdf(X[i]);
  return {out};
}

// dx = dy * (Phi(x) + x * phi(x)), phi the standard normal density.
std::vector<paddle::Tensor> GeluBackward(const paddle::Tensor& x, const paddle::Tensor& grad_out,
                                         int64_t threads) {
  check_float32(grad_out, "grad_out");
  auto grad_x = paddle::empty(x.shape(), x.dtype(), x.place());
  const float *X = x.data<float>(), *DY = grad_out.data<float>();
  float* DX = grad_x.data<float>();
  const int64_t n = x.numel();
#pragma omp parallel for simd schedule(static) num_threads(thread_count(threads))
  for (int64_t i = 0; i < n; ++i) {
    const float v = X[i];
    DX[i] = DY[i] * (normal_cdf(v) + v * kInvSqrt2Pi * exp_approx(-0.5f * v * v));
  }
  return {grad_x};
}

// Depthwise k x k convolution, stride 1, zero padding k / 2, run directly on
// channels-last tokens [B, H * W, C] (row-major over the H x W grid), so that
// the token <-> NCHW transposes around it disappear.  PerViT, SP-ViT and VVT
// put such a conv between token-layout ops; VVT-tiny's (512 channels at 56 x 56,
// batch 32) took Paddle 180 ms forward and 660 ms backward, plus four transposes
// of the activation.  Channels are the inner, vectorised loop; the weight is
// regrouped tap-major, [k * k, C].
namespace {

struct Grid {
  int64_t batch, height, width, channels, kernel;
  int64_t pad() const { return kernel / 2; }
  int64_t pixel(int64_t b, int64_t h, int64_t w) const { return ((b * height + h) * width + w) * channels; }
};

Grid token_grid(const paddle::Tensor& x, const paddle::Tensor& weight, int64_t height, int64_t width) {
  const int64_t C = x.shape().back();
  PD_CHECK(height > 0 && width > 0 && x.numel() % (height * width * C) == 0,
           "tokens do not form a ", height, " x ", width, " grid of ", C, " channels");
  const auto& w = weight.shape();
  PD_CHECK(w.size() == 4 && w[0] == C && w[1] == 1 && w[2] == w[3] && w[2] % 2 == 1,
           "weight must be [C, 1, k, k] with an odd k");
  return {x.numel() / (height * width * C), height, width, C, w[2]};
}

std::vector<float> taps_of(const paddle::Tensor& weight, const Grid& g) {
  std::vector<float> taps(static_cast<size_t>(g.kernel * g.kernel * g.channels));
  const float* W = weight.data<float>();
  for (int64_t c = 0; c < g.channels; ++c)
    for (int64_t t = 0; t < g.kernel * g.kernel; ++t) taps[t * g.channels + c] = W[c * g.kernel * g.kernel + t];
  return taps;
}

// out[pixel] (+)= sum over taps of src[pixel + (i - pad, j - pad) * direction] * taps[i, j];
// direction +1 is the convolution, -1 its transpose (the gradient wrt the input).
void correlate_rows(const float* src, const float* taps, float* out, const Grid& g, int direction,
                    int64_t row) {
  const int64_t b = row / g.height, h = row % g.height, C = g.channels, k = g.kernel;
  for (int64_t w = 0; w < g.width; ++w) {
    float* o = out + g.pixel(b, h, w);
    for (int64_t i = 0; i < k; ++i) {
      const int64_t hh = h + direction * (i - g.pad());
      if (hh < 0 || hh >= g.height) continue;
      for (int64_t j = 0; j < k; ++j) {
        const int64_t ww = w + direction * (j - g.pad());
        if (ww < 0 || ww >= g.width) continue;
        const float *in = src + g.pixel(b, hh, ww), *t = taps + (i * k + j) * C;
#pragma omp simd
        for (int64_t c = 0; c < C; ++c) o[c] += in[c] * t[c];
      }
    }
  }
}

}  // namespace

std::vector<paddle::Tensor> DepthwiseConvForward(const paddle::Tensor& x, const paddle::Tensor& weight,
                                                 const paddle::Tensor& bias, int64_t height, int64_t width,
                                                 int64_t threads) {
  check_float32(x, "x");
  const Grid g = token_grid(x, weight, height, width);
  PD_CHECK(bias.numel() == g.channels, "bias must have ", g.channels, " elements");
  const std::vector<float> taps = taps_of(weight, g);
  auto out = paddle::empty(x.shape(), x.dtype(), x.place());
  const float *X = x.data<float>(), *B = bias.data<float>();
  float* Y = out.data<float>();
#pragma omp parallel for schedule(static) num_threads(thread_count(threads))
  for (int64_t row = 0; row < g.batch * g.height; ++row) {
    for (int64_t w = 0; w < g.width; ++w) std::copy(B, B + g.channels, Y + g.pixel(0, row, w));
    correlate_rows(X, taps.data(), Y, g, +1, row);
  }
  return {out};
}

std::vector<paddle::Tensor> DepthwiseConvBackward(const paddle::Tensor& x, const paddle::Tensor& weight,
                                                  const paddle::Tensor& grad_out, int64_t height,
                                                  int64_t width, int64_t threads) {
  check_float32(grad_out, "grad_out");
  const Grid g = token_grid(x, weight, height, width);
  const int64_t C = g.channels, k = g.kernel, rows = g.batch * g.height;
  const std::vector<float> taps = taps_of(weight, g);
  const int workers = thread_count(threads);
  // per thread: weight gradient [k * k, C], then bias gradient [C]
  const int64_t span = (k * k + 1) * C;
  std::vector<float> partial(static_cast<size_t>(workers * span), 0.f);
  auto grad_x = paddle::empty(x.shape(), x.dtype(), x.place());
  const float *X = x.data<float>(), *DY = grad_out.data<float>();
  float* DX = grad_x.data<float>();
#pragma omp parallel num_threads(workers)
  {
    float* dtaps = partial.data() + omp_get_thread_num() * span;
    float* dbias = dtaps + k * k * C;
#pragma omp for schedule(static)
    for (int64_t row = 0; row < rows; ++row) {
      std::fill(DX + g.pixel(0, row, 0), DX + g.pixel(0, row + 1, 0), 0.f);
      correlate_rows(DY, taps.data(), DX, g, -1, row);
      const int64_t b = row / g.height, h = row % g.height;
      for (int64_t w = 0; w < g.width; ++w) {
        const float* dy = DY + g.pixel(b, h, w);
#pragma omp simd
        for (int64_t c = 0; c < C; ++c) dbias[c] += dy[c];
        for (int64_t i = 0; i < k; ++i) {
          const int64_t hh = h + i - g.pad();
          if (hh < 0 || hh >= g.height) continue;
          for (int64_t j = 0; j < k; ++j) {
            const int64_t ww = w + j - g.pad();
            if (ww < 0 || ww >= g.width) continue;
            const float* in = X + g.pixel(b, hh, ww);
            float* dt = dtaps + (i * k + j) * C;
#pragma omp simd
            for (int64_t c = 0; c < C; ++c) dt[c] += dy[c] * in[c];
          }
        }
      }
    }
  }
  const std::vector<float> total = sum_over_threads(partial, workers);
  std::vector<float> per_channel(static_cast<size_t>(k * k * C));   // [tap, C] -> the weight's [C, tap]
  for (int64_t c = 0; c < C; ++c)
    for (int64_t tap = 0; tap < k * k; ++tap) per_channel[c * k * k + tap] = total[tap * C + c];
  return {grad_x, tensor_of(per_channel.data(), weight.shape()), tensor_of(total.data() + k * k * C, {C})};
}

// PerViT's peripheral attention weights from the logits `dots` [B, h, N, N] (q.k,
// not yet scaled), the scale s > 0 and the position attention `position`
// [1, h, N, N] (in (0, 1)), per row:
//   w = exp(s * (dots - max(dots))) * position,  attn = w / max(sum(w), 1e-12).
// Paddle ran this as six ops whose batch-broadcast multiply and its gradient
// (a sum over the batch) took 1.4 s of PerViT-T's 7.7 s training step.
// The backward pass, with g the gradient of attn and r = sum(g * attn) per row:
//   d dots = s * attn * (g - r),  d position = sum over the batch of (g - r) / S * e,
// where e = exp(s * (dots - max)) and S the clipped row sum (its gradient is 0 when clipped).
// Taking the scale in saves a pass over the [B, h, N, N] logits each way.
namespace {
constexpr float kMinRowSum = 1e-12f;
}

std::vector<paddle::Tensor> PeripheralAttentionForward(const paddle::Tensor& dots,
                                                        const paddle::Tensor& position, float scale,
                                                        int64_t threads) {
  check_float32(dots, "dots");
  PD_CHECK(scale > 0.f, "the scale must be positive");
  check_float32(position, "position");
  const int64_t N = dots.shape().back(), rows = dots.numel() / N, per_image = position.numel() / N;
  PD_CHECK(per_image > 0 && rows % per_image == 0, "position must be [1, h, N, N] for dots [B, h, N, N]");
  auto attn = paddle::empty(dots.shape(), dots.dtype(), dots.place());
  auto row_max = paddle::empty({rows}, dots.dtype(), dots.place());
  auto row_sum = paddle::empty({rows}, dots.dtype(), dots.place());
  const float *D = dots.data<float>(), *P = position.data<float>();
  float *A = attn.data<float>(), *MX = row_max.data<float>(), *SM = row_sum.data<float>();
#pragma omp parallel for schedule(static) num_threads(thread_count(threads))
  for (int64_t row = 0; row < rows; ++row) {
    const float *d = D + row * N, *p = P + (row % per_image) * N;
    float* a = A + row * N;
    float m = d[0];
    for (int64_t j = 1; j < N; ++j) m = d[j] > m ? d[j] : m;
    float sum = 0.f;
#pragma omp simd reduction(+ : sum)
    for (int64_t j = 0; j < N; ++j) {
      a[j] = exp_approx((d[j] - m) * scale) * p[j];
      sum += a[j];
    }
    const float inv = 1.f / (sum > kMinRowSum ? sum : kMinRowSum);
#pragma omp simd
    for (int64_t j = 0; j < N; ++j) a[j] *= inv;
    MX[row] = m;
    SM[row] = sum;
  }
  return {attn, row_max, row_sum};
}

std::vector<paddle::Tensor> PeripheralAttentionBackward(const paddle::Tensor& dots, const paddle::Tensor& position,
                                                         const paddle::Tensor& attn, const paddle::Tensor& row_max,
                                                         const paddle::Tensor& row_sum,
                                                         const paddle::Tensor& grad_attn, float scale,
                                                         int64_t threads) {
  check_float32(grad_attn, "grad_attn");
  const int64_t N = dots.shape().back(), rows = dots.numel() / N, per_image = position.numel() / N;
  const int64_t images = rows / per_image;
  auto grad_dots = paddle::empty(dots.shape(), dots.dtype(), dots.place());
  auto grad_position = paddle::empty(position.shape(), position.dtype(), position.place());
  const float *D = dots.data<float>(), *A = attn.data<float>(), *MX = row_max.data<float>(),
              *SM = row_sum.data<float>(), *G = grad_attn.data<float>();
  float *GD = grad_dots.data<float>(), *GP = grad_position.data<float>();
  // one thread per position row, looping over the batch: no two threads write the same row
#pragma omp parallel for schedule(static) num_threads(thread_count(threads))
  for (int64_t prow = 0; prow < per_image; ++prow) {
    float* gp = GP + prow * N;
    std::fill(gp, gp + N, 0.f);
    for (int64_t img = 0; img < images; ++img) {
      const int64_t row = img * per_image + prow;
      const float *d = D + row * N, *a = A + row * N, *g = G + row * N;
      float* gd = GD + row * N;
      float r = 0.f;
#pragma omp simd reduction(+ : r)
      for (int64_t j = 0; j < N; ++j) r += g[j] * a[j];
      const bool clipped = !(SM[row] > kMinRowSum);
      const float m = MX[row], inv = 1.f / (clipped ? kMinRowSum : SM[row]), shift = clipped ? 0.f : r;
#pragma omp simd
      for (int64_t j = 0; j < N; ++j) {
        gd[j] = scale * a[j] * (g[j] - shift);
        gp[j] += (g[j] - shift) * inv * exp_approx((d[j] - m) * scale);
      }
    }
  }
  return {grad_dots, grad_position};
}

// softmax(scale * x) over the last axis, written over x: attention's
// softmax(q k^T / sqrt(d)) on the fresh q k^T product, which nothing else reads.
// Paddle runs it as a scale, a softmax and a copy per pass, 345 + 196 ms of a
// PiT-S training step; the backward, with y the result and g its gradient:
//   dx = scale * y * (g - sum(g * y)).
std::vector<paddle::Tensor> ScaledSoftmaxForward(paddle::Tensor& x, float scale, int64_t threads) {
  check_float32(x, "x");
  const int64_t N = x.shape().back(), rows = N ? x.numel() / N : 0;
  float* X = x.data<float>();
#pragma omp parallel for schedule(static) num_threads(thread_count(threads))
  for (int64_t row = 0; row < rows; ++row) {
    float* y = X + row * N;
    float m = y[0];
    for (int64_t j = 1; j < N; ++j) m = y[j] > m ? y[j] : m;
    float sum = 0.f;
#pragma omp simd reduction(+ : sum)
    for (int64_t j = 0; j < N; ++j) {
      y[j] = exp_approx((y[j] - m) * scale);
      sum += y[j];
    }
    const float inv = 1.f / sum;  // >= 1: the maximum contributes e^0
#pragma omp simd
    for (int64_t j = 0; j < N; ++j) y[j] *= inv;
  }
  return {};
}

std::vector<paddle::Tensor> ScaledSoftmaxBackward(const paddle::Tensor& out, const paddle::Tensor& grad_out,
                                                  float scale, int64_t threads) {
  check_float32(grad_out, "grad_out");
  const int64_t N = out.shape().back(), rows = N ? out.numel() / N : 0;
  auto grad_x = paddle::empty(out.shape(), out.dtype(), out.place());
  const float *Y = out.data<float>(), *G = grad_out.data<float>();
  float* GX = grad_x.data<float>();
#pragma omp parallel for schedule(static) num_threads(thread_count(threads))
  for (int64_t row = 0; row < rows; ++row) {
    const float *y = Y + row * N, *g = G + row * N;
    float* gx = GX + row * N;
    float r = 0.f;
#pragma omp simd reduction(+ : r)
    for (int64_t j = 0; j < N; ++j) r += g[j] * y[j];
#pragma omp simd
    for (int64_t j = 0; j < N; ++j) gx[j] = scale * y[j] * (g[j] - r);
  }
  return {grad_x};
}

// y = x @ weight + bias, weight [K, N].  The products are Paddle's own matmul (MKL);
// the bias is added over the product in place and its gradient summed per
// thread.  Paddle's Linear adds the bias as a separate broadcast op whose
// gradient is a slow column reduction, and the ones-GEMM detour
// (engine/layers.py) still costs a product-sized add and copy each way:
// 29 ms of the 96 ms of forward + backward for PiT-S's stage-1 qkv projection.
namespace {
std::vector<int64_t> rows_by(const paddle::Tensor& t, int64_t cols) {
  return {cols ? t.numel() / cols : 0, cols};
}
}  // namespace

std::vector<paddle::Tensor> LinearForward(const paddle::Tensor& x, const paddle::Tensor& weight,
                                          const paddle::Tensor& bias, int64_t threads) {
  check_float32(x, "x");
  const int64_t N = weight.shape().back();
  PD_CHECK(weight.shape().size() == 2 && x.shape().back() == weight.shape()[0] && bias.numel() == N,
           "linear: x [..., K], weight [K, N] and bias [N] expected");
  auto out = paddle::experimental::matmul(x, weight);
  const int64_t rows = N ? out.numel() / N : 0;
  const float* B = bias.data<float>();
  float* Y = out.data<float>();
#pragma omp parallel for schedule(static) num_threads(thread_count(threads))
  for (int64_t i = 0; i < rows; ++i) {
    float* y = Y + i * N;
#pragma omp simd
    for (int64_t j = 0; j < N; ++j) y[j] += B[j];
  }
  return {out};
}

std::vector<paddle::Tensor> LinearBackward(const paddle::Tensor& x, const paddle::Tensor& weight,
                                           const paddle::Tensor& grad_out, int64_t threads) {
  check_float32(grad_out, "grad_out");
  const int64_t K = weight.shape()[0], N = weight.shape()[1], rows = N ? grad_out.numel() / N : 0;
  auto grad_x = paddle::experimental::matmul(grad_out, weight, false, true);
  auto grad_weight = paddle::experimental::matmul(paddle::experimental::reshape(x, rows_by(x, K)),
                                                  paddle::experimental::reshape(grad_out, rows_by(grad_out, N)),
                                                  true, false);
  const int workers = thread_count(threads);
  std::vector<float> partial(static_cast<size_t>(workers) * N, 0.f);
  const float* G = grad_out.data<float>();
#pragma omp parallel num_threads(workers)
  {
    float* acc = partial.data() + static_cast<size_t>(omp_get_thread_num()) * N;
#pragma omp for schedule(static)
    for (int64_t i = 0; i < rows; ++i) {
      const float* g = G + i * N;
#pragma omp simd
      for (int64_t j = 0; j < N; ++j) acc[j] += g[j];
    }
  }
  return {grad_x, grad_weight, tensor_of(sum_over_threads(partial, workers).data(), {N})};
}

// GroupNorm of a channels-first x [N, C, ...] in G groups (C / G channels each), with a weight and a
// bias per channel.  PerViT's position encoding runs two per block, recomputed every training step
// whatever the batch ([196, 12, 16, 16] with one group per channel, then [196, 3, 14, 14]): Paddle's
// CPU kernels spent 100 ms of a PerViT-T training step at batch 1 in them, most of it in the
// backward.  One task per (sample, group), statistics in double, the weight and bias gradients
// summed per thread; mean and 1 / std are kept for the backward pass.
namespace {
struct Groups {
  int64_t rows, groups, channels_per_group, spatial, length;   // rows = N * G, length = elements per row
};

Groups groups_of(const paddle::Tensor& x, const paddle::Tensor& weight, int64_t groups) {
  const auto& xs = x.shape();
  PD_CHECK(xs.size() >= 2 && groups > 0 && xs[1] % groups == 0 && weight.numel() == xs[1],
           "group norm: x [N, C, ...] with C a multiple of the groups, weight and bias [C] expected");
  const int64_t C = xs[1], spatial = xs[0] * C ? x.numel() / (xs[0] * C) : 0;
  return {xs[0] * groups, groups, C / groups, spatial, C / groups * spatial};
}
}  // namespace

std::vector<paddle::Tensor> GroupNormForward(const paddle::Tensor& x, const paddle::Tensor& weight,
                                             const paddle::Tensor& bias, float epsilon, int64_t groups,
                                             int64_t threads) {
  check_float32(x, "x");
  const Groups g = groups_of(x, weight, groups);
  auto out = paddle::empty(x.shape(), x.dtype(), x.place());
  auto mean = paddle::empty({g.rows}, x.dtype(), x.place());
  auto rstd = paddle::empty({g.rows}, x.dtype(), x.place());
  const float *X = x.data<float>(), *W = weight.data<float>(), *B = bias.data<float>();
  float *Y = out.data<float>(), *M = mean.data<float>(), *R = rstd.data<float>();
#pragma omp parallel for schedule(static) num_threads(thread_count(threads))
  for (int64_t r = 0; r < g.rows; ++r) {
    const float* x_row = X + r * g.length;
    double sum = 0.;
    for (int64_t i = 0; i < g.length; ++i) sum += x_row[i];
    const double mu = sum / g.length;
    double squares = 0.;
    for (int64_t i = 0; i < g.length; ++i) squares += (x_row[i] - mu) * (x_row[i] - mu);
    const float m = static_cast<float>(mu), inv = static_cast<float>(1. / std::sqrt(squares / g.length + epsilon));
    M[r] = m;
    R[r] = inv;
    for (int64_t c = 0; c < g.channels_per_group; ++c) {
      const int64_t channel = (r % g.groups) * g.channels_per_group + c;
      const float scale = inv * W[channel], shift = B[channel] - m * scale;
      const float* xs = x_row + c * g.spatial;
      float* ys = Y + r * g.length + c * g.spatial;
#pragma omp simd
      for (int64_t i = 0; i < g.spatial; ++i) ys[i] = xs[i] * scale + shift;
    }
  }
  return {out, mean, rstd};
}

// dx = rstd * (dy w - mean(dy w) - xhat * mean(dy w xhat)) over each group, xhat = (x - mean) * rstd;
// dweight[c] = sum dy xhat and dbias[c] = sum dy over the samples and positions of channel c.
std::vector<paddle::Tensor> GroupNormBackward(const paddle::Tensor& x, const paddle::Tensor& weight,
                                              const paddle::Tensor& mean, const paddle::Tensor& rstd,
                                              const paddle::Tensor& grad_out, int64_t groups, int64_t threads) {
  check_float32(grad_out, "grad_out");
  const Groups g = groups_of(x, weight, groups);
  const int64_t C = g.groups * g.channels_per_group;
  auto grad_x = paddle::empty(x.shape(), x.dtype(), x.place());
  const float *X = x.data<float>(), *W = weight.data<float>(), *M = mean.data<float>(), *R = rstd.data<float>();
  const float* DY = grad_out.data<float>();
  float* DX = grad_x.data<float>();
  const int workers = thread_count(threads);
  std::vector<float> partial(static_cast<size_t>(workers) * 2 * C, 0.f);   // per thread: dweight, dbias
#pragma omp parallel num_threads(workers)
  {
    float* dweight = partial.data() + static_cast<size_t>(omp_get_thread_num()) * 2 * C;
    float* dbias = dweight + C;
#pragma omp for schedule(static)
    for (int64_t r = 0; r < g.rows; ++r) {
      const float m = M[r], inv = R[r];
      double sum_g = 0., sum_g_xhat = 0.;
      for (int64_t c = 0; c < g.channels_per_group; ++c) {
        const int64_t channel = (r % g.groups) * g.channels_per_group + c;
        const float* xs = X + r * g.length + c * g.spatial;
        const float* dys = DY + r * g.length + c * g.spatial;
        float dw = 0.f, db = 0.f;
#pragma omp simd reduction(+ : dw, db)
        for (int64_t i = 0; i < g.spatial; ++i) {
          dw += dys[i] * (xs[i] - m) * inv;
          db += dys[i];
        }
        dweight[channel] += dw;
        dbias[channel] += db;
        sum_g += static_cast<double>(db) * W[channel];
        sum_g_xhat += static_cast<double>(dw) * W[channel];
      }
      const float mean_g = static_cast<float>(sum_g / g.length), mean_g_xhat = static_cast<float>(sum_g_xhat / g.length);
      for (int64_t c = 0; c < g.channels_per_group; ++c) {
        const int64_t channel = (r % g.groups) * g.channels_per_group + c;
        const float w = W[channel];
        const float* xs = X + r * g.length + c * g.spatial;
        const float* dys = DY + r * g.length + c * g.spatial;
        float* dxs = DX + r * g.length + c * g.spatial;
#pragma omp simd
        for (int64_t i = 0; i < g.spatial; ++i)
          dxs[i] = inv * (dys[i] * w - mean_g - (xs[i] - m) * inv * mean_g_xhat);
      }
    }
  }
  const std::vector<float> total = sum_over_threads(partial, workers);
  return {grad_x, tensor_of(total.data(), {C}), tensor_of(total.data() + C, {C})};
}

// GELU then Linear, out = gelu(x) @ W + b: the second half of a transformer MLP, keeping only x
// for the backward pass, which computes gelu(x) again (one elementwise pass).  Run as two ops,
// GELU keeps x (for its gradient) and the Linear keeps gelu(x) (for its weight gradient): the
// MLP's hidden activation twice (ViT-S at batch 32: 37 MB a block; VVT-tiny's stage 1, with its
// 8x MLP, 103 MB a block).
std::vector<paddle::Tensor> GeluLinearForward(const paddle::Tensor& x, const paddle::Tensor& weight,
                                              const paddle::Tensor& bias, int64_t threads) {
  return LinearForward(GeluForward(x, threads)[0], weight, bias, threads);
}

std::vector<paddle::Tensor> GeluLinearBackward(const paddle::Tensor& x, const paddle::Tensor& weight,
                                               const paddle::Tensor& grad_out, int64_t threads) {
  auto grads = LinearBackward(GeluForward(x, threads)[0], weight, grad_out, threads);   // d gelu(x), dW, db
  // dx = d gelu(x) * (Phi(x) + x * phi(x)), in place over the fresh d gelu(x)
  const float* X = x.data<float>();
  float* D = grads[0].data<float>();
  const int64_t n = x.numel();
#pragma omp parallel for simd schedule(static) num_threads(thread_count(threads))
  for (int64_t i = 0; i < n; ++i) {
    const float v = X[i];
    D[i] *= normal_cdf(v) + v * kInvSqrt2Pi * exp_approx(-0.5f * v * v);
  }
  return grads;
}

// Depthwise conv of an NCHW image with a channel multiplier (groups = input
// channels; output channel o reads input channel o / multiplier), any stride and
// zero padding: PiT's pooling layer (3x3, stride 2, 144 -> 288 channels on
// PiT-S).  Paddle's CPU depthwise kernel spent 28 ms forward and 57 backward on
// that layer's 16M multiply-adds; here each image plane is one thread's job.
namespace {
struct Planes {
  int64_t batch, channels, height, width, multiplier, kernel_h, kernel_w, out_h, out_w;
  int64_t stride_h, stride_w, pad_h, pad_w;
};

Planes depthwise_planes(const paddle::Tensor& x, const paddle::Tensor& weight, int64_t stride_h,
                        int64_t stride_w, int64_t pad_h, int64_t pad_w) {
  const auto& xs = x.shape();
  const auto& ws = weight.shape();
  PD_CHECK(xs.size() == 4 && ws.size() == 4 && ws[1] == 1 && ws[0] % xs[1] == 0,
           "depthwise conv: x [B, C, H, W] and weight [C * multiplier, 1, kh, kw] expected");
  PD_CHECK(stride_h > 0 && stride_w > 0 && pad_h >= 0 && pad_w >= 0, "bad stride or padding");
  Planes p{xs[0], xs[1], xs[2], xs[3], ws[0] / xs[1], ws[2], ws[3], 0, 0, stride_h, stride_w, pad_h, pad_w};
  p.out_h = (p.height + 2 * pad_h - p.kernel_h) / stride_h + 1;
  p.out_w = (p.width + 2 * pad_w - p.kernel_w) / stride_w + 1;
  PD_CHECK(p.out_h > 0 && p.out_w > 0, "depthwise conv: the kernel is larger than the padded image");
  return p;
}

// The taps [ky0, ky1) x [kx0, kx1) of output pixel (oy, ox) that fall inside the
// image, whose tap (ky, kx) reads input pixel (iy + ky, ix + kx).
struct Window {
  int64_t iy, ix, ky0, ky1, kx0, kx1;
};

inline Window window_of(const Planes& p, int64_t oy, int64_t ox) {
  const int64_t iy = oy * p.stride_h - p.pad_h, ix = ox * p.stride_w - p.pad_w;
  return {iy, ix, std::max<int64_t>(0, -iy), std::min(p.kernel_h, p.height - iy),
          std::max<int64_t>(0, -ix), std::min(p.kernel_w, p.width - ix)};
}
}  // namespace

std::vector<paddle::Tensor> DepthwiseConvImageForward(const paddle::Tensor& x, const paddle::Tensor& weight,
                                                      const paddle::Tensor& bias, int64_t stride_h,
                                                      int64_t stride_w, int64_t pad_h, int64_t pad_w,
                                                      int64_t threads) {
  check_float32(x, "x");
  const Planes p = depthwise_planes(x, weight, stride_h, stride_w, pad_h, pad_w);
  const int64_t O = p.channels * p.multiplier, taps = p.kernel_h * p.kernel_w;
  PD_CHECK(bias.numel() == O, "bias must have ", O, " elements");
  auto out = paddle::empty({p.batch, O, p.out_h, p.out_w}, x.dtype(), x.place());
  const float *X = x.data<float>(), *W = weight.data<float>(), *B = bias.data<float>();
  float* Y = out.data<float>();
#pragma omp parallel for schedule(static) num_threads(thread_count(threads))
  for (int64_t plane = 0; plane < p.batch * O; ++plane) {
    const int64_t b = plane / O, o = plane % O;
    const float* in = X + (b * p.channels + o / p.multiplier) * p.height * p.width;
    const float* w = W + o * taps;
    float* y = Y + plane * p.out_h * p.out_w;
    for (int64_t oy = 0; oy < p.out_h; ++oy)
      for (int64_t ox = 0; ox < p.out_w; ++ox) {
        const Window win = window_of(p, oy, ox);
        float acc = B[o];
        for (int64_t ky = win.ky0; ky < win.ky1; ++ky)
          for (int64_t kx = win.kx0; kx < win.kx1; ++kx)
            acc += in[(win.iy + ky) * p.width + win.ix + kx] * w[ky * p.kernel_w + kx];
        y[oy * p.out_w + ox] = acc;
      }
  }
  return {out};
}

std::vector<paddle::Tensor> DepthwiseConvImageBackward(const paddle::Tensor& x, const paddle::Tensor& weight,
                                                       const paddle::Tensor& grad_out, int64_t stride_h,
                                                       int64_t stride_w, int64_t pad_h, int64_t pad_w,
                                                       int64_t threads) {
  check_float32(grad_out, "grad_out");
  const Planes p = depthwise_planes(x, weight, stride_h, stride_w, pad_h, pad_w);
  const int64_t O = p.channels * p.multiplier, taps = p.kernel_h * p.kernel_w;
  const int workers = thread_count(threads);
  const int64_t span = O * (taps + 1);  // per thread: weight gradient [O, taps], then bias gradient [O]
  std::vector<float> partial(static_cast<size_t>(workers * span), 0.f);
  auto grad_x = paddle::empty(x.shape(), x.dtype(), x.place());
  const float *X = x.data<float>(), *W = weight.data<float>(), *G = grad_out.data<float>();
  float* DX = grad_x.data<float>();
#pragma omp parallel num_threads(workers)
  {
    float* dw = partial.data() + omp_get_thread_num() * span;
    float* db = dw + O * taps;
    // one input plane per iteration: its gradient gathers from its `multiplier` output planes
#pragma omp for schedule(static)
    for (int64_t plane = 0; plane < p.batch * p.channels; ++plane) {
      const float* in = X + plane * p.height * p.width;
      float* din = DX + plane * p.height * p.width;
      std::fill(din, din + p.height * p.width, 0.f);
      for (int64_t m = 0; m < p.multiplier; ++m) {
        const int64_t o = (plane % p.channels) * p.multiplier + m;
        const float* g = G + ((plane / p.channels) * O + o) * p.out_h * p.out_w;
        const float* w = W + o * taps;
        float *dwo = dw + o * taps, bias_sum = 0.f;
        for (int64_t oy = 0; oy < p.out_h; ++oy)
          for (int64_t ox = 0; ox < p.out_w; ++ox) {
            const float go = g[oy * p.out_w + ox];
            bias_sum += go;
            const Window win = window_of(p, oy, ox);
            for (int64_t ky = win.ky0; ky < win.ky1; ++ky)
              for (int64_t kx = win.kx0; kx < win.kx1; ++kx) {
                const int64_t at = (win.iy + ky) * p.width + win.ix + kx;
                din[at] += go * w[ky * p.kernel_w + kx];
                dwo[ky * p.kernel_w + kx] += go * in[at];
              }
          }
        db[o] += bias_sum;
      }
    }
  }
  const std::vector<float> total = sum_over_threads(partial, workers);
  return {grad_x, tensor_of(total.data(), weight.shape()), tensor_of(total.data() + O * taps, {O})};
}

// sign(x) * clip(|x|, low, high): VVT's guard against tiny and huge values (the official
// `abs_clamp`), applied to every attention output.  As Paddle ops (abs, clip, sign,
// multiply) it keeps four tensors the size of x for the backward pass (x, |x|, sign(x)
// and the clipped magnitude: 147 MB per clamp in VVT-tiny's stage 1 at batch 32); here
// only x.  The gradient is the composite's: dy where x != 0 and low <= |x| <= high
// (Paddle's clip passes it at its bounds), else 0.  A NaN stays NaN.
std::vector<paddle::Tensor> AbsClampForward(const paddle::Tensor& x, float low, float high, int64_t threads) {
  check_float32(x, "x");
  auto out = paddle::empty(x.shape(), x.dtype(), x.place());
  const float* X = x.data<float>();
  float* Y = out.data<float>();
  const int64_t n = x.numel();
#pragma omp parallel for simd schedule(static) num_threads(thread_count(threads))
  for (int64_t i = 0; i < n; ++i) {
    const float v = X[i], m = std::fabs(v);
    const float c = m < low ? low : (m > high ? high : m);
    Y[i] = v > 0.f ? c : (v < 0.f ? -c : v * c);  // v * c: 0 for 0, NaN for NaN
  }
  return {out};
}

std::vector<paddle::Tensor> AbsClampBackward(const paddle::Tensor& x, const paddle::Tensor& grad_out, float low,
                                             float high, int64_t threads) {
  check_float32(grad_out, "grad_out");
  auto grad_x = paddle::empty(x.shape(), x.dtype(), x.place());
  const float *X = x.data<float>(), *DY = grad_out.data<float>();
  float* DX = grad_x.data<float>();
  const int64_t n = x.numel();
#pragma omp parallel for simd schedule(static) num_threads(thread_count(threads))
  for (int64_t i = 0; i < n; ++i) {
    const float m = std::fabs(X[i]);
    DX[i] = X[i] != 0.f && m >= low && m <= high ? DY[i] : 0.f;
  }
  return {grad_x};
}

// y[b] = x[b] * scale[b] over the first axis of x: stochastic depth, scale[b] its
// per-sample mask divided by the keep probability.  Paddle's broadcast multiply keeps
// x (a whole residual branch) for the scale's gradient, which nobody asks for; here
// only the B scales are kept (ViT-S at batch 32: 9.2 MB less per drop path, 22 of them).
std::vector<paddle::Tensor> ScaleRowsForward(const paddle::Tensor& x, const paddle::Tensor& scale,
                                             int64_t threads) {
  check_float32(x, "x");
  check_float32(scale, "scale");
  const int64_t rows = x.shape().empty() ? 1 : x.shape()[0];
  PD_CHECK(scale.numel() == rows, "scale must have one value per row of x (", rows, ")");
  auto out = paddle::empty(x.shape(), x.dtype(), x.place());
  const int64_t span = rows ? x.numel() / rows : 0;
  const float *X = x.data<float>(), *S = scale.data<float>();
  float* Y = out.data<float>();
#pragma omp parallel for schedule(static) num_threads(thread_count(threads))
  for (int64_t row = 0; row < rows; ++row) {
    const float s = S[row];
    const float* x_row = X + row * span;
    float* y_row = Y + row * span;
#pragma omp simd
    for (int64_t i = 0; i < span; ++i) y_row[i] = x_row[i] * s;
  }
  return {out};
}

std::vector<paddle::Tensor> ScaleRowsBackward(const paddle::Tensor& scale, const paddle::Tensor& grad_out,
                                              int64_t threads) {
  return ScaleRowsForward(grad_out, scale, threads);  // the same map: dx[b] = dy[b] * scale[b]
}

#ifdef PADDLEVIT_WITH_CBLAS
// The BLAS of Paddle's x86 wheel (MKL, LP64 interface), declared here because the
// wheel ships the library without its headers.
extern "C" {
void cblas_sgemm(int layout, int trans_a, int trans_b, int m, int n, int k, float alpha, const float* a,
                 int lda, const float* b, int ldb, float beta, float* c, int ldc);
int MKL_Set_Num_Threads_Local(int threads);  // the C entry (the lower-case one is Fortran's)
}
constexpr int kRowMajor = 101, kNoTrans = 111, kTrans = 112;
constexpr int64_t kQueryBlock = 64;

// Inside an OpenMP task loop the tasks are the parallelism: MKL runs this thread's
// GEMMs on this thread alone while the guard lives, then its setting is restored.
class SingleThreadedBlas {
 public:
  SingleThreadedBlas() : previous_(MKL_Set_Num_Threads_Local(1)) {}
  ~SingleThreadedBlas() { MKL_Set_Num_Threads_Local(previous_); }

 private:
  const int previous_;
};

// Attention, softmax(q k^T / sqrt(d)) v, read straight from the packed qkv projection
// [B, N, 3, heads, d]; the result is [B, N, heads, d], with each query row's
// log-sum-exp of scores [B, heads, N] kept for the backward pass.  Neither pass ever
// holds more than a block of 64 query rows of scores (64 x N floats, which stay in
// the core's cache), as PyTorch's CPU flash attention: the unfused path copies q, k
// and v out of qkv, then writes the whole [B, heads, N, N] matrix to memory, reads
// it back twice, and keeps it for the backward pass (204 MB a block on PiT-S's stage 1).
struct AttentionShape {
  int64_t B, N, H, D, stride;  // stride: between consecutive tokens of q (of k, of v)
  float scale;
  explicit AttentionShape(const paddle::Tensor& qkv) {
    check_float32(qkv, "qkv");
    const auto& s = qkv.shape();
    PD_CHECK(s.size() == 5 && s[2] == 3, "attention: qkv [B, N, 3, heads, d] expected");
    B = s[0], N = s[1], H = s[3], D = s[4], stride = 3 * H * D;
    scale = 1.f / std::sqrt(static_cast<float>(D));
  }
};

// Forward: each task is one image, one head and a block of queries.  Scores by one
// GEMM, the softmax numerators in place, the output by a second GEMM, scaled by
// 1 / row sum at the end (d values a row rather than N).
std::vector<paddle::Tensor> AttentionForward(const paddle::Tensor& qkv, int64_t threads) {
  const AttentionShape a(qkv);
  const int64_t blocks = (a.N + kQueryBlock - 1) / kQueryBlock;
  auto out = paddle::empty({a.B, a.N, a.H, a.D}, paddle::DataType::FLOAT32, paddle::CPUPlace());
  auto lse = paddle::empty({a.B, a.H, a.N}, paddle::DataType::FLOAT32, paddle::CPUPlace());
  const float* QKV = qkv.data<float>();
  float *O = out.data<float>(), *L = lse.data<float>();
#pragma omp parallel num_threads(thread_count(threads))
  {
    const SingleThreadedBlas blas;
    std::vector<float> scores(static_cast<size_t>(kQueryBlock * a.N)), inverse_sum(kQueryBlock);
    // consecutive tasks share an image and a head, so a thread keeps reading the same k and v
#pragma omp for schedule(static)
    for (int64_t task = 0; task < a.B * a.H * blocks; ++task) {
      const int64_t b = task / (a.H * blocks), h = task / blocks % a.H, first = task % blocks * kQueryBlock;
      const int64_t rows = std::min(kQueryBlock, a.N - first);
      const float* q = QKV + (b * a.N + first) * a.stride + h * a.D;
      const float* k = QKV + b * a.N * a.stride + (a.H + h) * a.D;
      const float* v = k + a.H * a.D;
      float* o = O + ((b * a.N + first) * a.H + h) * a.D;
      float* l = L + (b * a.H + h) * a.N + first;
      cblas_sgemm(kRowMajor, kNoTrans, kTrans, rows, a.N, a.D, a.scale, q, a.stride, k, a.stride, 0.f,
                  scores.data(), a.N);
      for (int64_t r = 0; r < rows; ++r) {
        float* y = scores.data() + r * a.N;
        float m = y[0];
        for (int64_t j = 1; j < a.N; ++j) m = y[j] > m ? y[j] : m;
        float sum = 0.f;
#pragma omp simd reduction(+ : sum)
        for (int64_t j = 0; j < a.N; ++j) {
          y[j] = exp_approx(y[j] - m);
          sum += y[j];
        }
        inverse_sum[r] = 1.f / sum;  // sum >= 1: the maximum contributes e^0
        l[r] = m + std::log(sum);
      }
      cblas_sgemm(kRowMajor, kNoTrans, kNoTrans, rows, a.D, a.N, 1.f, scores.data(), a.N, v, a.stride, 0.f, o,
                  a.H * a.D);
      for (int64_t r = 0; r < rows; ++r)
#pragma omp simd
        for (int64_t j = 0; j < a.D; ++j) o[r * a.H * a.D + j] *= inverse_sum[r];
    }
  }
  return {out, lse};
}

// Backward: each task is one image and one head (dk and dv sum over all its query
// blocks).  Per block, with P = exp(scale q k^T - lse) recomputed from the saved
// log-sum-exp: dv += P^T do; dP = do v^T; dS = P * (dP - rowsum(do * o));
// dq = scale dS k; dk += scale dS^T q.  Five GEMMs, the gradient written in place
// into the packed [B, N, 3, heads, d] layout of qkv.
std::vector<paddle::Tensor> AttentionBackward(const paddle::Tensor& qkv, const paddle::Tensor& out,
                                              const paddle::Tensor& lse, const paddle::Tensor& grad_out,
                                              int64_t threads) {
  const AttentionShape a(qkv);
  check_float32(grad_out, "grad_out");
  auto grad_qkv = paddle::empty(qkv.shape(), paddle::DataType::FLOAT32, paddle::CPUPlace());
  const float *QKV = qkv.data<float>(), *O = out.data<float>(), *L = lse.data<float>(),
              *G = grad_out.data<float>();
  float* DQKV = grad_qkv.data<float>();
  const int64_t row = a.H * a.D;  // between consecutive tokens of o and do
#pragma omp parallel num_threads(thread_count(threads))
  {
    const SingleThreadedBlas blas;
    std::vector<float> p(static_cast<size_t>(kQueryBlock * a.N)), dp(p.size()), delta(kQueryBlock);
#pragma omp for schedule(static)
    for (int64_t task = 0; task < a.B * a.H; ++task) {
      const int64_t b = task / a.H, h = task % a.H;
      const float* q0 = QKV + b * a.N * a.stride + h * a.D;
      const float *k = q0 + a.H * a.D, *v = k + a.H * a.D;
      float* dq0 = DQKV + b * a.N * a.stride + h * a.D;
      float *dk = dq0 + a.H * a.D, *dv = dk + a.H * a.D;
      for (int64_t t = 0; t < a.N; ++t) {
        std::fill(dk + t * a.stride, dk + t * a.stride + a.D, 0.f);
        std::fill(dv + t * a.stride, dv + t * a.stride + a.D, 0.f);
      }
      for (int64_t first = 0; first < a.N; first += kQueryBlock) {
        const int64_t rows = std::min(kQueryBlock, a.N - first);
        const float* q = q0 + first * a.stride;
        const float* o = O + ((b * a.N + first) * a.H + h) * a.D;
        const float* g = G + ((b * a.N + first) * a.H + h) * a.D;
        const float* l = L + (b * a.H + h) * a.N + first;
        cblas_sgemm(kRowMajor, kNoTrans, kTrans, rows, a.N, a.D, a.scale, q, a.stride, k, a.stride, 0.f, p.data(),
                    a.N);
        for (int64_t r = 0; r < rows; ++r) {
          float* y = p.data() + r * a.N;
          const float shift = l[r];
#pragma omp simd
          for (int64_t j = 0; j < a.N; ++j) y[j] = exp_approx(y[j] - shift);
          float d = 0.f;
#pragma omp simd reduction(+ : d)
          for (int64_t j = 0; j < a.D; ++j) d += g[r * row + j] * o[r * row + j];
          delta[r] = d;
        }
        cblas_sgemm(kRowMajor, kTrans, kNoTrans, a.N, a.D, rows, 1.f, p.data(), a.N, g, row, 1.f, dv, a.stride);
        cblas_sgemm(kRowMajor, kNoTrans, kTrans, rows, a.N, a.D, 1.f, g, row, v, a.stride, 0.f, dp.data(), a.N);
        for (int64_t r = 0; r < rows; ++r) {
          float *y = p.data() + r * a.N, *dy = dp.data() + r * a.N;
          const float d = delta[r];
#pragma omp simd
          for (int64_t j = 0; j < a.N; ++j) y[j] *= dy[j] - d;  // now dS
        }
        cblas_sgemm(kRowMajor, kNoTrans, kNoTrans, rows, a.D, a.N, a.scale, p.data(), a.N, k, a.stride, 0.f,
                    dq0 + first * a.stride, a.stride);
        cblas_sgemm(kRowMajor, kTrans, kNoTrans, a.N, a.D, rows, a.scale, p.data(), a.N, q, a.stride, 1.f, dk,
                    a.stride);
      }
    }
  }
  return {grad_qkv};
}

// Dense convolution of NCHW images (groups 1, dilation 1, zero padding), forward and
// backward.  Per image, band after band of output rows: the band's patches are unfolded
// into [C * kh * kw, rows * OW] columns (about 1 MB, which stays in cache) and GEMMs
// with the weight [O, C * kh * kw] do the rest:
//   forward   out_band = W columns (+ bias);
//   backward  dW += dout_band columns^T, dcolumns = W^T dout_band folded back (added)
//             into dx, db += dout_band summed over its pixels.
// The backward unfolds the columns again from x rather than keeping them (9x the input
// for a 3x3 kernel).  With at least as many images as threads each thread takes whole
// images (single-threaded GEMMs, dW and db accumulated per thread); with fewer, MKL
// threads each GEMM.  Paddle's own kernel unfolds whole images on one thread.  Forward +
// backward at batch 32, 2 threads, Paddle / PyTorch (oneDNN) / here, in ms:
//   SP-ViT's 3x3 64->64 stem conv at 112x112:     1,959-2,051 / 865 / 715-722;
//   SP-ViT's 7x7 stride-2 3->64 first conv:          733-768 / 578 / 267-276;
//   SP-ViT's 8x8 stride-8 64->384 patch embedding:   527-554 / 833 / 435-456;
//   PiT-S's 16x16 stride-8 3->144 patch embedding:   215-223 / 274 / 133-135.
struct ConvShape {
  static constexpr int64_t kMinWidth = 1024;
  int64_t B, C, H, W, O, KH, KW, OH, OW, K, P, stride_h, stride_w, pad_h, pad_w, band, backward_band;

  ConvShape(const paddle::Tensor& x, const paddle::Tensor& weight, int64_t sh, int64_t sw, int64_t ph, int64_t pw)
      : stride_h(sh), stride_w(sw), pad_h(ph), pad_w(pw) {
    const auto &xs = x.shape(), &ws = weight.shape();
    PD_CHECK(xs.size() == 4 && ws.size() == 4 && ws[1] == xs[1], "conv: x [B, C, H, W], weight [O, C, kh, kw] expected");
    B = xs[0], C = xs[1], H = xs[2], W = xs[3], O = ws[0], KH = ws[2], KW = ws[3];
    OH = (H + 2 * pad_h - KH) / stride_h + 1, OW = (W + 2 * pad_w - KW) / stride_w + 1;
    PD_CHECK(OH > 0 && OW > 0, "conv: the kernel is larger than the padded image");
    K = C * KH * KW, P = OH * OW;
    // output rows per GEMM: their unfolded patches fill about 1 MB, which stays in cache;
    // the backward's weight gradient GEMM wants at least kMinWidth columns (a narrower band
    // rereads and rewrites all of dW for few columns: SP-ViT's 8x8 stride-8 64->384 patch
    // embedding, 4 rows of 14, took 566 ms forward + backward, Paddle 478)
    band = std::max<int64_t>(1, std::min<int64_t>(OH, (int64_t{1} << 18) / (K * OW)));
    backward_band = std::min<int64_t>(OH, std::max<int64_t>(band, (kMinWidth + OW - 1) / OW));
  }

  // The output columns [lo, hi) whose input column ox * stride_w - pad_w + kx lies in the image;
  // the others read the zero padding.  Found once per tap, so the loops below have no bounds test
  // per element (PerViT's position encoding, 196 maps of 12 x 16 x 16 per block: its backward
  // took 10.9 ms a call with one).
  void inside(int64_t kx, int64_t* lo, int64_t* hi) const {
    const int64_t start = kx - pad_w;                                  // the input column at ox = 0
    *lo = start >= 0 ? 0 : std::min(OW, (-start + stride_w - 1) / stride_w);
    *hi = start >= W ? 0 : std::min(OW, (W - 1 - start) / stride_w + 1);
    *hi = std::max(*hi, *lo);
  }

  // Columns [K, rows * OW] of the output rows first .. first + rows of `image` [C, H, W].
  void unfold(const float* image, int64_t first, int64_t rows, float* columns) const {
    const int64_t width = rows * OW;
    for (int64_t row = 0; row < K; ++row) {
      const int64_t c = row / (KH * KW), ky = row / KW % KH, kx = row % KW, start = kx - pad_w;
      int64_t lo, hi;
      inside(kx, &lo, &hi);
      for (int64_t oy = first; oy < first + rows; ++oy) {
        const int64_t iy = oy * stride_h - pad_h + ky;
        float* d = columns + row * width + (oy - first) * OW;
        if (iy < 0 || iy >= H) {
          std::fill(d, d + OW, 0.f);
          continue;
        }
        const float* src = image + (c * H + iy) * W;
        std::fill(d, d + lo, 0.f);
        std::fill(d + hi, d + OW, 0.f);
        if (stride_w == 1) {
          std::copy(src + lo + start, src + hi + start, d + lo);
        } else {
          for (int64_t ox = lo; ox < hi; ++ox) d[ox] = src[ox * stride_w + start];
        }
      }
    }
  }

  // The transpose of `unfold`: each column entry added to the pixel of `image` it was read from.
  void fold_add(const float* columns, int64_t first, int64_t rows, float* image) const {
    const int64_t width = rows * OW;
    for (int64_t row = 0; row < K; ++row) {
      const int64_t c = row / (KH * KW), ky = row / KW % KH, kx = row % KW, start = kx - pad_w;
      int64_t lo, hi;
      inside(kx, &lo, &hi);
      for (int64_t oy = first; oy < first + rows; ++oy) {
        const int64_t iy = oy * stride_h - pad_h + ky;
        if (iy < 0 || iy >= H) continue;
        const float* s = columns + row * width + (oy - first) * OW;
        float* dst = image + (c * H + iy) * W;
        if (stride_w == 1) {
          float* shifted = dst + lo + start;
          const float* from = s + lo;
#pragma omp simd
          for (int64_t i = 0; i < hi - lo; ++i) shifted[i] += from[i];
        } else {
          for (int64_t ox = lo; ox < hi; ++ox) dst[ox * stride_w + start] += s[ox];
        }
      }
    }
  }
};

std::vector<paddle::Tensor> ConvForward(const paddle::Tensor& x, const paddle::Tensor& weight,
                                        const paddle::Tensor& bias, int64_t stride_h, int64_t stride_w, int64_t pad_h,
                                        int64_t pad_w, int64_t threads) {
  check_float32(x, "x");
  const ConvShape s(x, weight, stride_h, stride_w, pad_h, pad_w);
  PD_CHECK(bias.numel() == s.O, "conv: bias [O] expected");
  auto out = paddle::empty({s.B, s.O, s.OH, s.OW}, paddle::DataType::FLOAT32, paddle::CPUPlace());
  const float *X = x.data<float>(), *Wt = weight.data<float>(), *Bias = bias.data<float>();
  float* Y = out.data<float>();
  const int workers = thread_count(threads);
  auto convolve = [&](int64_t b, float* columns) {
    float* y = Y + b * s.O * s.P;
    for (int64_t first = 0; first < s.OH; first += s.band) {
      const int64_t rows = std::min(s.band, s.OH - first), width = rows * s.OW;
      s.unfold(X + b * s.C * s.H * s.W, first, rows, columns);
      float* out_band = y + first * s.OW;
      cblas_sgemm(kRowMajor, kNoTrans, kNoTrans, s.O, width, s.K, 1.f, Wt, s.K, columns, width, 0.f, out_band, s.P);
      for (int64_t o = 0; o < s.O; ++o)
#pragma omp simd
        for (int64_t i = 0; i < width; ++i) out_band[o * s.P + i] += Bias[o];
    }
  };
  const size_t column_floats = static_cast<size_t>(s.K * s.band * s.OW);
  if (s.B >= workers) {
#pragma omp parallel num_threads(workers)
    {
      const SingleThreadedBlas blas;
      std::vector<float> columns(column_floats);
#pragma omp for schedule(static)
      for (int64_t b = 0; b < s.B; ++b) convolve(b, columns.data());
    }
  } else {
    std::vector<float> columns(column_floats);
    for (int64_t b = 0; b < s.B; ++b) convolve(b, columns.data());
  }
  return {out};
}

std::vector<paddle::Tensor> ConvBackward(const paddle::Tensor& x, const paddle::Tensor& weight,
                                         const paddle::Tensor& grad_out, int64_t stride_h, int64_t stride_w,
                                         int64_t pad_h, int64_t pad_w, int64_t threads) {
  check_float32(grad_out, "grad_out");
  const ConvShape s(x, weight, stride_h, stride_w, pad_h, pad_w);
  const auto g = grad_out.contiguous();
  auto grad_x = paddle::empty(x.shape(), paddle::DataType::FLOAT32, paddle::CPUPlace());
  const float *X = x.data<float>(), *Wt = weight.data<float>(), *G = g.data<float>();
  float* DX = grad_x.data<float>();
  const int workers = s.B >= thread_count(threads) ? thread_count(threads) : 1;
  const size_t column_floats = static_cast<size_t>(s.K * s.backward_band * s.OW), weight_floats = s.O * s.K;
  std::vector<float> dw(workers * weight_floats, 0.f), db(workers * s.O, 0.f);
  auto backward = [&](int64_t b, float* columns, float* dcolumns, float* dw_t, float* db_t) {
    const float* image = X + b * s.C * s.H * s.W;
    float* dimage = DX + b * s.C * s.H * s.W;
    std::fill(dimage, dimage + s.C * s.H * s.W, 0.f);
    for (int64_t first = 0; first < s.OH; first += s.backward_band) {
      const int64_t rows = std::min(s.backward_band, s.OH - first), width = rows * s.OW;
      const float* g_band = G + b * s.O * s.P + first * s.OW;
      s.unfold(image, first, rows, columns);
      cblas_sgemm(kRowMajor, kNoTrans, kTrans, s.O, s.K, width, 1.f, g_band, s.P, columns, width, 1.f, dw_t, s.K);
      cblas_sgemm(kRowMajor, kTrans, kNoTrans, s.K, width, s.O, 1.f, Wt, s.K, g_band, s.P, 0.f, dcolumns, width);
      s.fold_add(dcolumns, first, rows, dimage);
      for (int64_t o = 0; o < s.O; ++o) {
        float sum = 0.f;
#pragma omp simd reduction(+ : sum)
        for (int64_t i = 0; i < width; ++i) sum += g_band[o * s.P + i];
        db_t[o] += sum;
      }
    }
  };
  if (workers > 1) {
#pragma omp parallel num_threads(workers)
    {
      const SingleThreadedBlas blas;
      const int t = omp_get_thread_num();
      std::vector<float> columns(column_floats), dcolumns(column_floats);
#pragma omp for schedule(static)
      for (int64_t b = 0; b < s.B; ++b)
        backward(b, columns.data(), dcolumns.data(), dw.data() + t * weight_floats, db.data() + t * s.O);
    }
  } else {
    std::vector<float> columns(column_floats), dcolumns(column_floats);
    for (int64_t b = 0; b < s.B; ++b) backward(b, columns.data(), dcolumns.data(), dw.data(), db.data());
  }
  return {grad_x, tensor_of(sum_over_threads(dw, workers).data(), weight.shape()),
          tensor_of(sum_over_threads(db, workers).data(), {s.O})};
}
#endif  // PADDLEVIT_WITH_CBLAS

// Output shapes and dtypes of the forward ops, for a graph being traced (an export with
// --cpu_kernels, engine/cpu/exported.py): Paddle asks every op of more than one input or output
// for them, and aborts the process where they are missing.  A size of -1 is known only when the
// graph runs (the batch); it stays -1 in every size computed from it.
namespace shapes {

using Shape = std::vector<int64_t>;

int64_t product(const Shape& dims, size_t from, size_t to) {
  int64_t n = 1;
  for (size_t i = from; i < to; ++i) {
    if (dims[i] < 0) return -1;
    n *= dims[i];
  }
  return n;
}

int64_t conv_size(int64_t in, int64_t kernel, int64_t stride, int64_t pad) {
  return in < 0 ? -1 : (in + 2 * pad - kernel) / stride + 1;
}

std::vector<Shape> LikeX(const Shape& x, const Shape& a, const Shape& b) { return {x}; }
std::vector<Shape> ScaleRows(const Shape& x, const Shape& scale) { return {x}; }

std::vector<Shape> Linear(const Shape& x, const Shape& weight, const Shape& bias) {
  Shape out(x);
  out.back() = weight.back();
  return {out};
}

std::vector<Shape> PeripheralAttention(const Shape& dots, const Shape& position) {
  const Shape rows{product(dots, 0, dots.size() - 1)};
  return {dots, rows, rows};
}

std::vector<Shape> GroupNorm(const Shape& x, const Shape& weight, const Shape& bias, float epsilon, int64_t groups,
                             int64_t threads) {
  const Shape rows{x[0] < 0 ? -1 : x[0] * groups};
  return {x, rows, rows};
}

std::vector<Shape> Attention(const Shape& qkv) {      // [B, N, 3, heads, d]
  return {{qkv[0], qkv[1], qkv[3], qkv[4]}, {qkv[0], qkv[3], qkv[1]}};
}

// dense and depthwise convolution alike: x [B, C, H, W], weight [O, C / groups, kh, kw]
std::vector<Shape> Conv(const Shape& x, const Shape& weight, const Shape& bias, int64_t stride_h, int64_t stride_w,
                        int64_t pad_h, int64_t pad_w, int64_t threads) {
  return {{x[0], weight[0], conv_size(x[2], weight[2], stride_h, pad_h), conv_size(x[3], weight[3], stride_w, pad_w)}};
}

std::vector<paddle::DataType> OfX1(const paddle::DataType& x) { return {x, x}; }
std::vector<paddle::DataType> OfX2(const paddle::DataType& x, const paddle::DataType& a) { return {x}; }
std::vector<paddle::DataType> OfX3(const paddle::DataType& x, const paddle::DataType& a, const paddle::DataType& b) {
  return {x};
}
std::vector<paddle::DataType> PeripheralAttentionDtypes(const paddle::DataType& dots, const paddle::DataType& p) {
  return {dots, dots, dots};
}

}  // namespace shapes

PD_BUILD_OP(fused_layer_norm)
    .Inputs({"X", "Weight", "Bias"})
    .Outputs({"Out", "Mean", "Rstd"})
    .Attrs({"epsilon: float", "threads: int64_t"})
    .SetKernelFn(PD_KERNEL(LayerNormForward))
    .SetInferShapeFn(PD_INFER_SHAPE(LayerNormShapes))
    .SetInferDtypeFn(PD_INFER_DTYPE(LayerNormDtypes));

PD_BUILD_GRAD_OP(fused_layer_norm)
    .Inputs({"X", "Weight", "Mean", "Rstd", paddle::Grad("Out")})
    .Outputs({paddle::Grad("X"), paddle::Grad("Weight"), paddle::Grad("Bias")})
    .Attrs({"threads: int64_t"})
    .SetKernelFn(PD_KERNEL(LayerNormBackward));

PD_BUILD_OP(fused_gelu)
    .Inputs({"X"})
    .Outputs({"Out"})
    .Attrs({"threads: int64_t"})
    .SetKernelFn(PD_KERNEL(GeluForward));

PD_BUILD_GRAD_OP(fused_gelu)
    .Inputs({"X", paddle::Grad("Out")})
    .Outputs({paddle::Grad("X")})
    .Attrs({"threads: int64_t"})
    .SetKernelFn(PD_KERNEL(GeluBackward));

PD_BUILD_OP(fused_depthwise_conv_tokens)
    .Inputs({"X", "Weight", "Bias"})
    .Outputs({"Out"})
    .Attrs({"height: int64_t", "width: int64_t", "threads: int64_t"})
    .SetKernelFn(PD_KERNEL(DepthwiseConvForward))
    .SetInferShapeFn(PD_INFER_SHAPE(shapes::LikeX))
    .SetInferDtypeFn(PD_INFER_DTYPE(shapes::OfX3));

PD_BUILD_GRAD_OP(fused_depthwise_conv_tokens)
    .Inputs({"X", "Weight", paddle::Grad("Out")})
    .Outputs({paddle::Grad("X"), paddle::Grad("Weight"), paddle::Grad("Bias")})
    .Attrs({"height: int64_t", "width: int64_t", "threads: int64_t"})
    .SetKernelFn(PD_KERNEL(DepthwiseConvBackward));

PD_BUILD_OP(fused_peripheral_attention)
    .Inputs({"Dots", "Position"})
    .Outputs({"Attn", "RowMax", "RowSum"})
    .Attrs({"scale: float", "threads: int64_t"})
    .SetKernelFn(PD_KERNEL(PeripheralAttentionForward))
    .SetInferShapeFn(PD_INFER_SHAPE(shapes::PeripheralAttention))
    .SetInferDtypeFn(PD_INFER_DTYPE(shapes::PeripheralAttentionDtypes));

PD_BUILD_GRAD_OP(fused_peripheral_attention)
    .Inputs({"Dots", "Position", "Attn", "RowMax", "RowSum", paddle::Grad("Attn")})
    .Outputs({paddle::Grad("Dots"), paddle::Grad("Position")})
    .Attrs({"scale: float", "threads: int64_t"})
    .SetKernelFn(PD_KERNEL(PeripheralAttentionBackward));

PD_BUILD_OP(fused_scaled_softmax_)
    .Inputs({"X"})
    .Outputs({"Out"})
    .SetInplaceMap({{"X", "Out"}})
    .Attrs({"scale: float", "threads: int64_t"})
    .SetKernelFn(PD_KERNEL(ScaledSoftmaxForward));

PD_BUILD_GRAD_OP(fused_scaled_softmax_)
    .Inputs({"Out", paddle::Grad("Out")})
    .Outputs({paddle::Grad("X")})
    .Attrs({"scale: float", "threads: int64_t"})
    .SetKernelFn(PD_KERNEL(ScaledSoftmaxBackward));

PD_BUILD_OP(fused_linear)
    .Inputs({"X", "Weight", "Bias"})
    .Outputs({"Out"})
    .Attrs({"threads: int64_t"})
    .SetKernelFn(PD_KERNEL(LinearForward))
    .SetInferShapeFn(PD_INFER_SHAPE(shapes::Linear))
    .SetInferDtypeFn(PD_INFER_DTYPE(shapes::OfX3));

PD_BUILD_GRAD_OP(fused_linear)
    .Inputs({"X", "Weight", paddle::Grad("Out")})
    .Outputs({paddle::Grad("X"), paddle::Grad("Weight"), paddle::Grad("Bias")})
    .Attrs({"threads: int64_t"})
    .SetKernelFn(PD_KERNEL(LinearBackward));

PD_BUILD_OP(fused_group_norm)
    .Inputs({"X", "Weight", "Bias"})
    .Outputs({"Out", "Mean", "Rstd"})
    .Attrs({"epsilon: float", "groups: int64_t", "threads: int64_t"})
    .SetKernelFn(PD_KERNEL(GroupNormForward))
    .SetInferShapeFn(PD_INFER_SHAPE(shapes::GroupNorm))
    .SetInferDtypeFn(PD_INFER_DTYPE(LayerNormDtypes));

PD_BUILD_GRAD_OP(fused_group_norm)
    .Inputs({"X", "Weight", "Mean", "Rstd", paddle::Grad("Out")})
    .Outputs({paddle::Grad("X"), paddle::Grad("Weight"), paddle::Grad("Bias")})
    .Attrs({"groups: int64_t", "threads: int64_t"})
    .SetKernelFn(PD_KERNEL(GroupNormBackward));

PD_BUILD_OP(fused_gelu_linear)
    .Inputs({"X", "Weight", "Bias"})
    .Outputs({"Out"})
    .Attrs({"threads: int64_t"})
    .SetKernelFn(PD_KERNEL(GeluLinearForward))
    .SetInferShapeFn(PD_INFER_SHAPE(shapes::Linear))
    .SetInferDtypeFn(PD_INFER_DTYPE(shapes::OfX3));

PD_BUILD_GRAD_OP(fused_gelu_linear)
    .Inputs({"X", "Weight", paddle::Grad("Out")})
    .Outputs({paddle::Grad("X"), paddle::Grad("Weight"), paddle::Grad("Bias")})
    .Attrs({"threads: int64_t"})
    .SetKernelFn(PD_KERNEL(GeluLinearBackward));

PD_BUILD_OP(fused_depthwise_conv_image)
    .Inputs({"X", "Weight", "Bias"})
    .Outputs({"Out"})
    .Attrs({"stride_h: int64_t", "stride_w: int64_t", "pad_h: int64_t", "pad_w: int64_t", "threads: int64_t"})
    .SetKernelFn(PD_KERNEL(DepthwiseConvImageForward))
    .SetInferShapeFn(PD_INFER_SHAPE(shapes::Conv))
    .SetInferDtypeFn(PD_INFER_DTYPE(shapes::OfX3));

PD_BUILD_GRAD_OP(fused_depthwise_conv_image)
    .Inputs({"X", "Weight", paddle::Grad("Out")})
    .Outputs({paddle::Grad("X"), paddle::Grad("Weight"), paddle::Grad("Bias")})
    .Attrs({"stride_h: int64_t", "stride_w: int64_t", "pad_h: int64_t", "pad_w: int64_t", "threads: int64_t"})
    .SetKernelFn(PD_KERNEL(DepthwiseConvImageBackward));

PD_BUILD_OP(fused_abs_clamp)
    .Inputs({"X"})
    .Outputs({"Out"})
    .Attrs({"low: float", "high: float", "threads: int64_t"})
    .SetKernelFn(PD_KERNEL(AbsClampForward));

PD_BUILD_GRAD_OP(fused_abs_clamp)
    .Inputs({"X", paddle::Grad("Out")})
    .Outputs({paddle::Grad("X")})
    .Attrs({"low: float", "high: float", "threads: int64_t"})
    .SetKernelFn(PD_KERNEL(AbsClampBackward));

PD_BUILD_OP(fused_scale_rows)
    .Inputs({"X", "Scale"})
    .Outputs({"Out"})
    .Attrs({"threads: int64_t"})
    .SetKernelFn(PD_KERNEL(ScaleRowsForward))
    .SetInferShapeFn(PD_INFER_SHAPE(shapes::ScaleRows))
    .SetInferDtypeFn(PD_INFER_DTYPE(shapes::OfX2));

PD_BUILD_GRAD_OP(fused_scale_rows)
    .Inputs({"Scale", paddle::Grad("Out")})
    .Outputs({paddle::Grad("X")})
    .Attrs({"threads: int64_t"})
    .SetKernelFn(PD_KERNEL(ScaleRowsBackward));

#ifdef PADDLEVIT_WITH_CBLAS
PD_BUILD_OP(fused_attention)
    .Inputs({"QKV"})
    .Outputs({"Out", "LSE"})
    .Attrs({"threads: int64_t"})
    .SetKernelFn(PD_KERNEL(AttentionForward))
    .SetInferShapeFn(PD_INFER_SHAPE(shapes::Attention))
    .SetInferDtypeFn(PD_INFER_DTYPE(shapes::OfX1));

PD_BUILD_GRAD_OP(fused_attention)
    .Inputs({"QKV", "Out", "LSE", paddle::Grad("Out")})
    .Outputs({paddle::Grad("QKV")})
    .Attrs({"threads: int64_t"})
    .SetKernelFn(PD_KERNEL(AttentionBackward));

PD_BUILD_OP(fused_conv)
    .Inputs({"X", "Weight", "Bias"})
    .Outputs({"Out"})
    .Attrs({"stride_h: int64_t", "stride_w: int64_t", "pad_h: int64_t", "pad_w: int64_t", "threads: int64_t"})
    .SetKernelFn(PD_KERNEL(ConvForward))
    .SetInferShapeFn(PD_INFER_SHAPE(shapes::Conv))
    .SetInferDtypeFn(PD_INFER_DTYPE(shapes::OfX3));

PD_BUILD_GRAD_OP(fused_conv)
    .Inputs({"X", "Weight", paddle::Grad("Out")})
    .Outputs({paddle::Grad("X"), paddle::Grad("Weight"), paddle::Grad("Bias")})
    .Attrs({"stride_h: int64_t", "stride_w: int64_t", "pad_h: int64_t", "pad_w: int64_t", "threads: int64_t"})
    .SetKernelFn(PD_KERNEL(ConvBackward));
#endif
