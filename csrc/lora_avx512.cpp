// AVX-512 float32 kernels of the CPU op (see lora_avx512.h for the formulas).
//
// Factor pass: rows are taken in tiles of kRows and rank components in groups of kRanks (r is zero-padded to a
// multiple of kRanks). Per tile and group, U and dU come from dot products of each row with the rows of A and B^T
// (two rows at a time, sixteen vector accumulators, reduced by a transposing horizontal add), and P and grad_A take
// rank-kRows updates in registers: each 16-column strip of the tile is loaded once and feeds all kRanks accumulator
// rows. The tile two tiles ahead is prefetched into L2 (into L1 it would evict the factors the current tile uses).
// Weight fold: four 16-column strips of a row of m at a time take their r rank-1 terms in registers (four
// independent FMA chains) before they are stored.
// The functions carry target attributes, so the file builds for any x86-64 CPU; callers check
// lora_avx512_supported() first.
#include "lora_avx512.h"

#include <c10/util/Exception.h>

#include <algorithm>
#include <cstring>
#include <vector>

#if defined(__x86_64__) || defined(_M_X64)
// GCC's AVX-512 intrinsics pass _mm*_undefined_*() as the unused merge source, which -Wmaybe-uninitialized reports.
#pragma GCC diagnostic ignored "-Wmaybe-uninitialized"
#include <immintrin.h>
#define AUTOLORA_X86_64 1
#endif

namespace autolora {

#ifdef AUTOLORA_X86_64
namespace {

#define AUTOLORA_AVX512 __attribute__((target("avx512f,avx2,fma"))) inline

constexpr int kRanks = 8;   // rank components per group (one 8-lane sum vector per row)
constexpr int kRows = 8;    // rows per tile (rank-kRows updates of P and grad_A)
constexpr int kLanes = 16;  // float32 lanes of a 512-bit vector
constexpr int64_t kSlice = 128;  // columns per slice in dot_tile (a multiple of kLanes)

// Mask of the valid lanes of the strip starting at column k of a row of length d.
AUTOLORA_AVX512 __mmask16 strip_mask(int64_t k, int64_t d) {
  const int64_t left = d - k;
  return left >= kLanes ? __mmask16(0xFFFF) : __mmask16((1u << left) - 1u);
}

// The lane sums of v[0..7], as one 8-lane vector.
AUTOLORA_AVX512 __m256 lane_sums(const __m512 (&v)[kRanks]) {
  __m256 h[kRanks];
  for (int j = 0; j < kRanks; ++j) {
    const __m256 high = _mm256_castpd_ps(_mm512_extractf64x4_pd(_mm512_castps_pd(v[j]), 1));
    h[j] = _mm256_add_ps(_mm512_castps512_ps256(v[j]), high);
  }
  const __m256 q0 = _mm256_hadd_ps(_mm256_hadd_ps(h[0], h[1]), _mm256_hadd_ps(h[2], h[3]));
  const __m256 q1 = _mm256_hadd_ps(_mm256_hadd_ps(h[4], h[5]), _mm256_hadd_ps(h[6], h[7]));
  return _mm256_add_ps(_mm256_permute2f128_ps(q0, q1, 0x20), _mm256_permute2f128_ps(q0, q1, 0x31));
}

// out[i][j] = sum_k rows[i][k] m[j][k] for the tile's kRows rows (row stride ld) and kRanks rows of m (stride d).
// Columns go in slices of kSlice, so the slice of m (kRanks x kSlice) stays in L1 while all tile rows use it; the
// vector partial sums of each row pair are kept in `partial` between slices.
AUTOLORA_AVX512 void dot_tile(const float* rows, int64_t ld, const float* m, int64_t d, float* out) {
  alignas(64) float partial[kRows][kRanks][kLanes];
  for (int64_t k0 = 0; k0 < d; k0 += kSlice) {
    const int64_t k1 = std::min(d, k0 + kSlice);
    for (int i = 0; i < kRows; i += 2) {
      __m512 acc0[kRanks], acc1[kRanks];
      for (int j = 0; j < kRanks; ++j) {
        acc0[j] = k0 == 0 ? _mm512_setzero_ps() : _mm512_load_ps(partial[i][j]);
        acc1[j] = k0 == 0 ? _mm512_setzero_ps() : _mm512_load_ps(partial[i + 1][j]);
      }
      const float* row0 = rows + i * ld;
      const float* row1 = row0 + ld;
      for (int64_t k = k0; k < k1; k += kLanes) {
        const __mmask16 mask = strip_mask(k, k1);
        const __m512 x0 = _mm512_maskz_loadu_ps(mask, row0 + k), x1 = _mm512_maskz_loadu_ps(mask, row1 + k);
        _mm_prefetch(reinterpret_cast<const char*>(row0 + 2 * kRows * ld + k), _MM_HINT_T1);
        _mm_prefetch(reinterpret_cast<const char*>(row1 + 2 * kRows * ld + k), _MM_HINT_T1);
        for (int j = 0; j < kRanks; ++j) {
          const __m512 w = _mm512_maskz_loadu_ps(mask, m + j * d + k);
          acc0[j] = _mm512_fmadd_ps(x0, w, acc0[j]);
          acc1[j] = _mm512_fmadd_ps(x1, w, acc1[j]);
        }
      }
      if (k1 < d) {
        for (int j = 0; j < kRanks; ++j) {
          _mm512_store_ps(partial[i][j], acc0[j]);
          _mm512_store_ps(partial[i + 1][j], acc1[j]);
        }
        continue;
      }
      _mm256_storeu_ps(out + i * kRanks, lane_sums(acc0));
      _mm256_storeu_ps(out + (i + 1) * kRanks, lane_sums(acc1));
    }
  }
}

// acc[j][k] += sum_i c[i][j] rows[i][k] for the tile's kRows rows (row stride ld) and kRanks accumulator rows
// (stride d).
AUTOLORA_AVX512 void rank_update_tile(const float* rows, int64_t ld, const float* c, int64_t d, float* acc) {
  for (int64_t k = 0; k < d; k += kLanes) {
    const __mmask16 mask = strip_mask(k, d);
    __m512 strip[kRows];
    for (int i = 0; i < kRows; ++i) strip[i] = _mm512_maskz_loadu_ps(mask, rows + i * ld + k);
    for (int j = 0; j < kRanks; ++j) {
      __m512 a = _mm512_maskz_loadu_ps(mask, acc + j * d + k);
      for (int i = 0; i < kRows; ++i) a = _mm512_fmadd_ps(_mm512_set1_ps(c[i * kRanks + j]), strip[i], a);
      _mm512_mask_storeu_ps(acc + j * d + k, mask, a);
    }
  }
}

// Copy of the first `rows` rows of an (rows x cols) matrix into a zero-filled (padded_rows x cols) buffer.
std::vector<float> zero_padded(const float* data, int64_t rows, int64_t cols, int64_t padded_rows) {
  std::vector<float> out(padded_rows * cols, 0.0f);
  if (rows > 0) std::memcpy(out.data(), data, sizeof(float) * rows * cols);
  return out;
}

}  // namespace

bool lora_avx512_supported() {
  static const bool supported = __builtin_cpu_supports("avx512f");
  return supported;
}

__attribute__((target("avx512f,avx2,fma"))) void lora_factor_grads_avx512(
    const float* lx, const float* g, int64_t rows, int64_t d_in, int64_t d_out, const float* lora_A,
    const float* lora_B_t, const float* coef, int64_t r, float* p, float* grad_A, float* du) {
  const int64_t groups = (r + kRanks - 1) / kRanks, r_padded = groups * kRanks;
  const std::vector<float> a = zero_padded(lora_A, r, d_in, r_padded), b_t = zero_padded(lora_B_t, r, d_out, r_padded);
  const std::vector<float> c = zero_padded(coef, r, 1, r_padded);
  std::vector<float> p_acc(r_padded * d_out, 0.0f), grad_a_acc(r_padded * d_in, 0.0f);
  alignas(64) float u[kRows * kRanks], du_tile[kRows * kRanks];

  for (int64_t row0 = 0; row0 < rows; row0 += kRows) {
    const int64_t tile_rows = std::min<int64_t>(kRows, rows - row0);
    // A short last tile is zero-padded: its extra rows have U = dU = 0 and add nothing.
    std::vector<float> lx_tail, g_tail;
    const float* lx_tile = lx + row0 * d_in;
    const float* g_tile = g + row0 * d_out;
    if (tile_rows < kRows) {
      lx_tail = zero_padded(lx_tile, tile_rows, d_in, kRows);
      g_tail = zero_padded(g_tile, tile_rows, d_out, kRows);
      lx_tile = lx_tail.data();
      g_tile = g_tail.data();
    }
    for (int64_t group = 0; group < groups; ++group) {
      const int64_t j0 = group * kRanks;
      dot_tile(lx_tile, d_in, a.data() + j0 * d_in, d_in, u);
      dot_tile(g_tile, d_out, b_t.data() + j0 * d_out, d_out, du_tile);
      for (int i = 0; i < kRows; ++i) {
        for (int j = 0; j < kRanks; ++j) du_tile[i * kRanks + j] *= c[j0 + j];
      }
      rank_update_tile(g_tile, d_out, u, d_out, p_acc.data() + j0 * d_out);
      rank_update_tile(lx_tile, d_in, du_tile, d_in, grad_a_acc.data() + j0 * d_in);
      if (du == nullptr) continue;
      for (int64_t i = 0; i < tile_rows; ++i) {
        for (int64_t j = j0; j < std::min(r, j0 + kRanks); ++j) du[(row0 + i) * r + j] = du_tile[i * kRanks + (j - j0)];
      }
    }
  }
  for (int64_t k = 0; k < r * d_out; ++k) p[k] += p_acc[k];
  for (int64_t k = 0; k < r * d_in; ++k) grad_A[k] += grad_a_acc[k];
}

__attribute__((target("avx512f,avx2,fma"))) void rank_update_rows_avx512(const float* m, const float* l,
                                                                          const float* rm, int64_t rows, int64_t cols,
                                                                          int64_t r, float* out) {
  constexpr int kStrips = 4;  // independent accumulators: the r FMAs into each one form a dependency chain
  for (int64_t i = 0; i < rows; ++i) {
    const float* l_row = l + i * r;
    for (int64_t k0 = 0; k0 < cols; k0 += kStrips * kLanes) {
      __mmask16 mask[kStrips];
      __m512 acc[kStrips];
      for (int s = 0; s < kStrips; ++s) {
        const int64_t k = k0 + s * kLanes;
        mask[s] = k < cols ? strip_mask(k, cols) : __mmask16(0);
        acc[s] = _mm512_maskz_loadu_ps(mask[s], m + i * cols + k);
      }
      for (int64_t j = 0; j < r; ++j) {
        const __m512 coef = _mm512_set1_ps(l_row[j]);
        for (int s = 0; s < kStrips; ++s) {
          acc[s] = _mm512_fmadd_ps(coef, _mm512_maskz_loadu_ps(mask[s], rm + j * cols + k0 + s * kLanes), acc[s]);
        }
      }
      for (int s = 0; s < kStrips; ++s) _mm512_mask_storeu_ps(out + i * cols + k0 + s * kLanes, mask[s], acc[s]);
    }
  }
}

#else  // not x86-64: the ATen path in lora_linear_cpu.cpp is used

bool lora_avx512_supported() { return false; }

void lora_factor_grads_avx512(const float*, const float*, int64_t, int64_t, int64_t, const float*, const float*,
                              const float*, int64_t, float*, float*, float*) {
  TORCH_CHECK(false, "lora_factor_grads_avx512: not built for this CPU architecture");
}

void rank_update_rows_avx512(const float*, const float*, const float*, int64_t, int64_t, int64_t, float*) {
  TORCH_CHECK(false, "rank_update_rows_avx512: not built for this CPU architecture");
}

#endif

}  // namespace autolora
