// The fused first ConvNet block on CPU, as XLA FFI custom calls (kip._src.kernels.native):
// patch cosines -> ABReLU NNGP / NTK maps -> pooled sums, one pooled cell of x1 at a time
// against every pooled cell of x2, so no covariance larger than one row of pooled outputs is
// ever written. The same quantities as kip._src.kernels.fused._tile and its VJP.
//
// Layouts (B independent blocks, M1 / M2 pooled cells, U = V = window^2 offsets inside a
// pooling window, P = patch length):
//   q1 (B, M1, U, P)  unit patch vectors of x1      r1 (B, M1, U)  their norms
//   q2 (B, V, P, M2)  unit patch vectors of x2      r2 (B, V, M2)  their norms
// Forward:  nngp[b, i, j] = sum_{u, v} r1 r2 (m sin(theta) + t(c)),
//           ntk[b, i, j]  = sum_{u, v} r1 r2 t(c),
//   c = <q1[b, i, u], q2[b, v, :, j]> clipped to [-1, 1] (and snapped to +-1 within 8 ulps),
//   theta = arccos c, D = s2 pi - m theta, t = c D.
// Backward (x1 side), with cotangents gk, gt (B, M1, M2):
//   dL/dr1 = sum r2 (gk (m sin + t) + gt t),
//   dL/dq1 = sum r1 r2 [(gk + gt) D + gt c D'] q2,  D' = m / sin(theta) (0 at |c| = 1),
//   no gradient through c where the raw cosine lies outside [-1, 1] beyond rounding.
// The x2 side is the x1 side of the swapped problem (the kernel is symmetric).
#include <algorithm>
#include <cmath>
#include <cstdint>
#include <limits>
#include <thread>
#include <vector>

#ifdef __linux__
#include <sched.h>
#endif

#include "xla/ffi/api/ffi.h"

namespace ffi = xla::ffi;

namespace {

constexpr double kPi = 3.14159265358979323846;
// kip._src.kernels.layers._ACOS_COEFFS: arccos(x) = sqrt(1 - x) poly(x) on [0, 1].
constexpr float kAcos[8] = {1.5707963050f, -0.2145988016f, 0.0889789874f, -0.0501743046f,
                            0.0308918810f, -0.0170881256f, 0.0066700901f, -0.0012624911f};

// Below float64 the polynomial of kip._src.kernels.layers._arccos; float64 uses std::acos,
// as that function uses jnp.arccos.
inline float Arccos(float c) {
  const float x = std::fabs(c);
  float p = kAcos[7];
  for (int k = 6; k >= 0; --k) p = p * x + kAcos[k];
  const float r = std::sqrt(std::max(1.0f - x, 0.0f)) * p;
  return c < 0 ? static_cast<float>(kPi) - r : r;
}
inline double Arccos(double c) { return std::acos(c); }

// kip._src.kernels.fused._snap.
template <typename T>
inline T Snap(T raw, T eps) {
  const T c = std::min(std::max(raw, T(-1)), T(1));
  return c >= T(1) - eps ? T(1) : (c <= eps - T(1) ? T(-1) : c);
}

struct Dims {
  int64_t b, m1, u, p, v, m2;
};

template <typename T>
struct Args {
  const T *q1, *r1, *q2, *r2;
  T s2, m;
};

// ---------------------------------------------------------------------------- forward
// Any P and U: the cosines of one (u, v) slice go through a row buffer.
template <typename T>
void ForwardGeneric(const Args<T>& a, const Dims& d, T* out_k, T* out_t, int64_t row0,
                    int64_t row1) {
  const T eps = 8 * std::numeric_limits<T>::epsilon();
  const T s2pi = a.s2 * static_cast<T>(kPi), m = a.m;
  const int64_t m2 = d.m2;
  std::vector<T> cbuf(m2), acc_k(m2), acc_t(m2);
  for (int64_t row = row0; row < row1; ++row) {
    const int64_t b = row / d.m1;
    std::fill(acc_k.begin(), acc_k.end(), T(0));
    std::fill(acc_t.begin(), acc_t.end(), T(0));
    for (int64_t u = 0; u < d.u; ++u) {
      const T ru = a.r1[row * d.u + u];
      if (ru == T(0)) continue;  // a zero patch (q = 0, r = 0) adds nothing
      const T* qu = a.q1 + (row * d.u + u) * d.p;
      for (int64_t v = 0; v < d.v; ++v) {
        const T* q2v = a.q2 + (b * d.v + v) * d.p * m2;
        const T* __restrict r2v = a.r2 + (b * d.v + v) * m2;
        T* __restrict c = cbuf.data();
        T* __restrict ak = acc_k.data();
        T* __restrict at = acc_t.data();
        std::fill(cbuf.begin(), cbuf.end(), T(0));
        for (int64_t k = 0; k < d.p; ++k) {
          const T qk = qu[k];
          const T* __restrict col = q2v + k * m2;
#pragma omp simd
          for (int64_t j = 0; j < m2; ++j) c[j] += qk * col[j];
        }
#pragma omp simd
        for (int64_t j = 0; j < m2; ++j) {
          const T cc = Snap(c[j], eps);
          const T sin = std::sqrt(std::max(T(1) - cc * cc, T(0)));
          const T t = cc * (s2pi - m * Arccos(cc));
          const T w = ru * r2v[j];
          at[j] += w * t;
          ak[j] += w * sin;
        }
      }
    }
    for (int64_t j = 0; j < m2; ++j) {
      out_k[row * m2 + j] = m * acc_k[j] + acc_t[j];
      out_t[row * m2 + j] = acc_t[j];
    }
  }
}

// P and U known at compile time: the U cosines of a column are formed in registers from one
// load of its patch.
template <typename T, int P, int U>
void ForwardFixed(const Args<T>& a, const Dims& d, T* out_k, T* out_t, int64_t row0,
                  int64_t row1) {
  const T eps = 8 * std::numeric_limits<T>::epsilon();
  const T s2pi = a.s2 * static_cast<T>(kPi), m = a.m;
  const int64_t m2 = d.m2;
  std::vector<T> acc_k(m2), acc_t(m2);
  for (int64_t row = row0; row < row1; ++row) {
    const int64_t b = row / d.m1;
    std::fill(acc_k.begin(), acc_k.end(), T(0));
    std::fill(acc_t.begin(), acc_t.end(), T(0));
    T qa[U][P], ra[U];
    for (int u = 0; u < U; ++u) {
      ra[u] = a.r1[row * U + u];
      for (int k = 0; k < P; ++k) qa[u][k] = a.q1[(row * U + u) * P + k];
    }
    for (int64_t v = 0; v < d.v; ++v) {
      const T* __restrict q2v = a.q2 + (b * d.v + v) * P * m2;
      const T* __restrict r2v = a.r2 + (b * d.v + v) * m2;
      T* __restrict ak = acc_k.data();
      T* __restrict at = acc_t.data();
#pragma omp simd
      for (int64_t j = 0; j < m2; ++j) {
        T col[P];
        for (int k = 0; k < P; ++k) col[k] = q2v[k * m2 + j];
        T sk = T(0), st = T(0);
        for (int u = 0; u < U; ++u) {
          T raw = T(0);
          for (int k = 0; k < P; ++k) raw += qa[u][k] * col[k];
          const T cc = Snap(raw, eps);
          const T sin = std::sqrt(std::max(T(1) - cc * cc, T(0)));
          const T t = cc * (s2pi - m * Arccos(cc));
          sk += ra[u] * sin;
          st += ra[u] * t;
        }
        at[j] += r2v[j] * st;
        ak[j] += r2v[j] * sk;
      }
    }
    for (int64_t j = 0; j < m2; ++j) {
      out_k[row * m2 + j] = m * acc_k[j] + acc_t[j];
      out_t[row * m2 + j] = acc_t[j];
    }
  }
}

// --------------------------------------------------------------------------- backward
// Per entry: the cosine cotangent g (0 outside [-1, 1]) and the norm cotangent's summand.
template <typename T>
struct EntryGrad {
  T g, dr;
};

template <typename T>
inline EntryGrad<T> Entry(T raw, T ru, T w2, T g_k, T g_t, T s2pi, T m, T eps) {
  const bool inside = std::fabs(raw) <= T(1) + eps;
  const T cc = Snap(raw, eps);
  const T one_minus = T(1) - cc * cc;
  const T sin = std::sqrt(std::max(one_minus, T(0)));
  const T dd = s2pi - m * Arccos(cc);
  const T t = cc * dd;
  const T dp = m / std::max(sin, std::numeric_limits<T>::min());  // D'; unused at |c| = 1
  const T slope = (g_k + g_t) * dd + (one_minus > T(0) ? g_t * cc * dp : T(0));
  return {inside ? ru * w2 * slope : T(0), (g_k * (m * sin + t) + g_t * t) * w2};
}

// Any P: the cosines and their cotangents of one (u, v) slice go through row buffers.
template <typename T>
void BackwardGeneric(const Args<T>& a, const Dims& d, const T* gk, const T* gt, T* dq1, T* dr1,
                     int64_t row0, int64_t row1) {
  const T eps = 8 * std::numeric_limits<T>::epsilon();
  const T s2pi = a.s2 * static_cast<T>(kPi), m = a.m;
  const int64_t m2 = d.m2;
  std::vector<T> cbuf(m2), gbuf(m2);
  for (int64_t row = row0; row < row1; ++row) {
    const int64_t b = row / d.m1;
    const T* __restrict gkr = gk + row * m2;
    const T* __restrict gtr = gt + row * m2;
    for (int64_t u = 0; u < d.u; ++u) {
      const T ru = a.r1[row * d.u + u];
      const T* qu = a.q1 + (row * d.u + u) * d.p;
      T* dq = dq1 + (row * d.u + u) * d.p;
      std::fill(dq, dq + d.p, T(0));
      T dr = T(0);
      for (int64_t v = 0; v < d.v; ++v) {
        const T* q2v = a.q2 + (b * d.v + v) * d.p * m2;
        const T* __restrict r2v = a.r2 + (b * d.v + v) * m2;
        T* __restrict c = cbuf.data();
        T* __restrict g = gbuf.data();
        std::fill(cbuf.begin(), cbuf.end(), T(0));
        for (int64_t k = 0; k < d.p; ++k) {
          const T qk = qu[k];
          const T* __restrict col = q2v + k * m2;
#pragma omp simd
          for (int64_t j = 0; j < m2; ++j) c[j] += qk * col[j];
        }
        T drv = T(0);
#pragma omp simd reduction(+ : drv)
        for (int64_t j = 0; j < m2; ++j) {
          const EntryGrad<T> e = Entry(c[j], ru, r2v[j], gkr[j], gtr[j], s2pi, m, eps);
          g[j] = e.g;
          drv += e.dr;
        }
        dr += drv;
        for (int64_t k = 0; k < d.p; ++k) {
          const T* __restrict col = q2v + k * m2;
          T s = T(0);
#pragma omp simd reduction(+ : s)
          for (int64_t j = 0; j < m2; ++j) s += g[j] * col[j];
          dq[k] += s;
        }
      }
      dr1[row * d.u + u] = dr;
    }
  }
}

// P <= 10 known at compile time: cosines formed in registers and dq1 accumulated in
// registers (one accumulator per patch component), no buffers.
template <typename T, int P>
void BackwardFixed(const Args<T>& a, const Dims& d, const T* gk, const T* gt, T* dq1, T* dr1,
                   int64_t row0, int64_t row1) {
  static_assert(P >= 1 && P <= 10, "BackwardFixed keeps at most 10 accumulators");
  const T eps = 8 * std::numeric_limits<T>::epsilon();
  const T s2pi = a.s2 * static_cast<T>(kPi), m = a.m;
  const int64_t m2 = d.m2;
  for (int64_t row = row0; row < row1; ++row) {
    const int64_t b = row / d.m1;
    const T* __restrict gkr = gk + row * m2;
    const T* __restrict gtr = gt + row * m2;
    for (int64_t u = 0; u < d.u; ++u) {
      const T ru = a.r1[row * d.u + u];
      T qu[P];
      for (int k = 0; k < P; ++k) qu[k] = a.q1[(row * d.u + u) * P + k];
      T dq[10] = {};
      T dr = T(0);
      for (int64_t v = 0; v < d.v; ++v) {
        const T* __restrict q2v = a.q2 + (b * d.v + v) * P * m2;
        const T* __restrict r2v = a.r2 + (b * d.v + v) * m2;
        T drv = 0, d0 = 0, d1 = 0, d2 = 0, d3 = 0, d4 = 0, d5 = 0, d6 = 0, d7 = 0, d8 = 0, d9 = 0;
#pragma omp simd reduction(+ : drv, d0, d1, d2, d3, d4, d5, d6, d7, d8, d9)
        for (int64_t j = 0; j < m2; ++j) {
          T col[10];
          for (int k = 0; k < P; ++k) col[k] = q2v[k * m2 + j];
          T raw = T(0);
          for (int k = 0; k < P; ++k) raw += qu[k] * col[k];
          const EntryGrad<T> e = Entry(raw, ru, r2v[j], gkr[j], gtr[j], s2pi, m, eps);
          drv += e.dr;
          const T g = e.g;
          if constexpr (P > 0) d0 += g * col[0];
          if constexpr (P > 1) d1 += g * col[1];
          if constexpr (P > 2) d2 += g * col[2];
          if constexpr (P > 3) d3 += g * col[3];
          if constexpr (P > 4) d4 += g * col[4];
          if constexpr (P > 5) d5 += g * col[5];
          if constexpr (P > 6) d6 += g * col[6];
          if constexpr (P > 7) d7 += g * col[7];
          if constexpr (P > 8) d8 += g * col[8];
          if constexpr (P > 9) d9 += g * col[9];
        }
        dr += drv;
        const T dv[10] = {d0, d1, d2, d3, d4, d5, d6, d7, d8, d9};
        for (int k = 0; k < P; ++k) dq[k] += dv[k];
      }
      for (int k = 0; k < P; ++k) dq1[(row * d.u + u) * P + k] = dq[k];
      dr1[row * d.u + u] = dr;
    }
  }
}

// ---------------------------------------------------------------------------- threads
// Threads of this process's CPU affinity (at least one).
int64_t NumThreads() {
#ifdef __linux__
  cpu_set_t set;
  if (sched_getaffinity(0, sizeof(set), &set) == 0) return std::max(1, CPU_COUNT(&set));
#endif
  return std::max(1u, std::thread::hardware_concurrency());
}

// Runs fn(row0, row1) on contiguous blocks of rows, one thread per block. The threads end with
// the call: no idle workers keep spinning against XLA's own thread pool.
template <typename Fn>
void ParallelRows(int64_t rows, const Fn& fn) {
  const int64_t nt = std::min<int64_t>(NumThreads(), std::max<int64_t>(rows, 1));
  const int64_t per = (rows + nt - 1) / nt;
  std::vector<std::thread> pool;
  for (int64_t id = 1; id < nt; ++id) {
    const int64_t r0 = std::min(rows, id * per), r1 = std::min(rows, r0 + per);
    if (r0 < r1) pool.emplace_back([&fn, r0, r1] { fn(r0, r1); });
  }
  fn(int64_t(0), std::min(rows, per));
  for (auto& t : pool) t.join();
}

// ---------------------------------------------------------------------------- handlers
template <ffi::DataType DT>
ffi::Error CheckShapes(const ffi::Buffer<DT>& q1, const ffi::Buffer<DT>& r1,
                       const ffi::Buffer<DT>& q2, const ffi::Buffer<DT>& r2, Dims* d) {
  auto s1 = q1.dimensions(), n1 = r1.dimensions(), s2 = q2.dimensions(), n2 = r2.dimensions();
  if (s1.size() != 4 || n1.size() != 3 || s2.size() != 4 || n2.size() != 3 ||
      s1[0] != s2[0] || s1[3] != s2[2] || n1[0] != s1[0] || n1[1] != s1[1] ||
      n1[2] != s1[2] || n2[0] != s2[0] || n2[1] != s2[1] || n2[2] != s2[3])
    return ffi::Error(ffi::ErrorCode::kInvalidArgument,
                      "kip abrelu_tile: expected q1 (B, M1, U, P), r1 (B, M1, U), "
                      "q2 (B, V, P, M2), r2 (B, V, M2)");
  *d = Dims{s1[0], s1[1], s1[2], s1[3], s2[1], s2[3]};
  return ffi::Error::Success();
}

template <ffi::DataType DT>
ffi::Error Forward(ffi::Buffer<DT> q1, ffi::Buffer<DT> r1, ffi::Buffer<DT> q2,
                   ffi::Buffer<DT> r2, double s2, double m, ffi::ResultBuffer<DT> out_k,
                   ffi::ResultBuffer<DT> out_t) {
  using T = ffi::NativeType<DT>;
  Dims d;
  if (auto err = CheckShapes(q1, r1, q2, r2, &d); err.failure()) return err;
  const Args<T> a{q1.typed_data(), r1.typed_data(), q2.typed_data(), r2.typed_data(), T(s2),
                  T(m)};
  T* ok = out_k->typed_data();
  T* ot = out_t->typed_data();
  ParallelRows(d.b * d.m1, [&](int64_t r0, int64_t r1_) {
    if (d.u == 4 && d.p == 10) return ForwardFixed<T, 10, 4>(a, d, ok, ot, r0, r1_);
    if (d.u == 4 && d.p == 9) return ForwardFixed<T, 9, 4>(a, d, ok, ot, r0, r1_);
    if (d.u == 4 && d.p == 28) return ForwardFixed<T, 28, 4>(a, d, ok, ot, r0, r1_);
    if (d.u == 4 && d.p == 27) return ForwardFixed<T, 27, 4>(a, d, ok, ot, r0, r1_);
    ForwardGeneric<T>(a, d, ok, ot, r0, r1_);
  });
  return ffi::Error::Success();
}

template <ffi::DataType DT>
ffi::Error Backward(ffi::Buffer<DT> q1, ffi::Buffer<DT> r1, ffi::Buffer<DT> q2,
                    ffi::Buffer<DT> r2, ffi::Buffer<DT> gk, ffi::Buffer<DT> gt, double s2,
                    double m, ffi::ResultBuffer<DT> dq1, ffi::ResultBuffer<DT> dr1) {
  using T = ffi::NativeType<DT>;
  Dims d;
  if (auto err = CheckShapes(q1, r1, q2, r2, &d); err.failure()) return err;
  const Args<T> a{q1.typed_data(), r1.typed_data(), q2.typed_data(), r2.typed_data(), T(s2),
                  T(m)};
  const T* pk = gk.typed_data();
  const T* pt = gt.typed_data();
  T* pq = dq1->typed_data();
  T* pr = dr1->typed_data();
  ParallelRows(d.b * d.m1, [&](int64_t r0, int64_t r1_) {
    if (d.p == 10) return BackwardFixed<T, 10>(a, d, pk, pt, pq, pr, r0, r1_);
    if (d.p == 9) return BackwardFixed<T, 9>(a, d, pk, pt, pq, pr, r0, r1_);
    BackwardGeneric<T>(a, d, pk, pt, pq, pr, r0, r1_);
  });
  return ffi::Error::Success();
}

}  // namespace

#define KIP_BIND_FORWARD(DT)                                                          \
  ffi::Ffi::Bind()                                                                    \
      .Arg<ffi::Buffer<DT>>()                                                         \
      .Arg<ffi::Buffer<DT>>()                                                         \
      .Arg<ffi::Buffer<DT>>()                                                         \
      .Arg<ffi::Buffer<DT>>()                                                         \
      .Attr<double>("s2")                                                             \
      .Attr<double>("m")                                                              \
      .Ret<ffi::Buffer<DT>>()                                                         \
      .Ret<ffi::Buffer<DT>>()
#define KIP_BIND_BACKWARD(DT)                                                         \
  ffi::Ffi::Bind()                                                                    \
      .Arg<ffi::Buffer<DT>>()                                                         \
      .Arg<ffi::Buffer<DT>>()                                                         \
      .Arg<ffi::Buffer<DT>>()                                                         \
      .Arg<ffi::Buffer<DT>>()                                                         \
      .Arg<ffi::Buffer<DT>>()                                                         \
      .Arg<ffi::Buffer<DT>>()                                                         \
      .Attr<double>("s2")                                                             \
      .Attr<double>("m")                                                              \
      .Ret<ffi::Buffer<DT>>()                                                         \
      .Ret<ffi::Buffer<DT>>()

XLA_FFI_DEFINE_HANDLER_SYMBOL(KipAbreluTileForwardF32, Forward<ffi::F32>,
                              KIP_BIND_FORWARD(ffi::F32));
XLA_FFI_DEFINE_HANDLER_SYMBOL(KipAbreluTileForwardF64, Forward<ffi::F64>,
                              KIP_BIND_FORWARD(ffi::F64));
XLA_FFI_DEFINE_HANDLER_SYMBOL(KipAbreluTileBackwardF32, Backward<ffi::F32>,
                              KIP_BIND_BACKWARD(ffi::F32));
XLA_FFI_DEFINE_HANDLER_SYMBOL(KipAbreluTileBackwardF64, Backward<ffi::F64>,
                              KIP_BIND_BACKWARD(ffi::F64));
