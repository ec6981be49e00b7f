// ISA-generic matmul kernel bodies. Included by matmul_avx2.cc and matmul_avx512.cc inside an
// anonymous namespace after the ISA's target pragma, with a traits struct V providing:
//   F            vector of kLanes f32
//   kLanes       lanes per vector
//   kMaxAcc      accumulators that fit in registers next to the operands
//   zero(), fma(a, b, c) = a·b + c, add(a, b), sum(v) (horizontal add)
//   load(const float*), load(const f16_t*), load(const f8e4m3_t*) -> F (f32)
//   I            vector of kLanes int32
//   nibbles(const uint8_t* p) -> I: the kLanes 4-bit codes in p[0 .. kLanes/2) (low nibble first)
//   bytes(const uint8_t* p) -> I: the kLanes bytes p[0 .. kLanes) zero-extended
//   cvt(I) -> F, lut16(I, const float* table) -> F: table[i] per lane (i < 16)
//   and_(I, int), shl(I, int), shr(I, int), or_(I, I), as_float(I) (bit cast), mul(F, F), set1(float)
//   store(float*, F)
//   Table (16 f32 values), scaled_table(const float* values, float s, float zs) -> Table: values[i] · s +
//     zs for i < 16 (one FMA each); lut(I idx, const Table&) -> F: table[idx & 15] per lane
//   load_bf16_pairs(const bf16_t* p, F& even, F& odd): 2·kLanes bf16 from p as f32, even-indexed
//     elements in `even`, odd-indexed in `odd` (one load and one shift or mask each: no widening)
// Weights are widened to f32 in registers and multiplied with f32 x, so the result is exact f32
// FMA arithmetic whatever the storage dtype (only the summation order differs from a scalar loop).
// Internal linkage (anonymous namespace) keeps the two instantiations apart under the ODR.

inline float to_f32(float v) { return v; }
inline float to_f32(bf16_t v) { return bf16_to_f32(v.bits); }
inline float to_f32(f16_t v) { return f16_to_f32(v.bits); }
inline float to_f32(f8e4m3_t v) { return kF8E4M3ToF32[v.bits]; }

// y[t·ldy + r] = Σ_k w[r·K + k] · x[t·ldx + k] for r < R, t < TT: R weight rows against TT x rows,
// R·TT accumulators, each weight vector loaded once and used TT times.
template <class V, typename WT, int R, int TT>
inline void tile(const WT* w, int64_t K, const float* x, int64_t ldx, float* y, int64_t ldy) {
  using F = typename V::F;
  F acc[R][TT];
#pragma GCC unroll 16
  for (int r = 0; r < R; ++r)
#pragma GCC unroll 16
    for (int t = 0; t < TT; ++t) acc[r][t] = V::zero();
  int64_t k = 0;
  for (; k + V::kLanes <= K; k += V::kLanes) {
    F xv[TT];
#pragma GCC unroll 16
    for (int t = 0; t < TT; ++t) xv[t] = V::load(x + t * ldx + k);
#pragma GCC unroll 16
    for (int r = 0; r < R; ++r) {
      _mm_prefetch(reinterpret_cast<const char*>(w + r * K + k) + kPrefetchBytes, _MM_HINT_T0);
      const F wv = V::load(w + r * K + k);
#pragma GCC unroll 16
      for (int t = 0; t < TT; ++t) acc[r][t] = V::fma(wv, xv[t], acc[r][t]);
    }
  }
  for (int r = 0; r < R; ++r) {
    for (int t = 0; t < TT; ++t) {
      float s = V::sum(acc[r][t]);
      for (int64_t kk = k; kk < K; ++kk) s += to_f32(w[r * K + kk]) * x[t * ldx + kk];
      y[t * ldy + r] = s;
    }
  }
}

// tile for BF16 weights. One vector load holds 2·kLanes bf16 = kLanes (even, odd) pairs; a shift
// and a mask turn it into two f32 vectors without the widening shuffle (which competes with the FMAs
// for the same ports once T > 1). x must be packed to match (pack_x_even_odd): per block of
// 2·kLanes elements, the even-indexed ones first, then the odd-indexed; the K % (2·kLanes) tail is
// left as is and handled by the scalar loop.
//
// Each output has two accumulators, one for the even-indexed elements and one for the odd, added
// at the end. Two dependency chains per output let a single weight row stream at full speed, so a
// decode step (T = 1) can walk the weight rows one after another (R = 1), the access pattern the
// hardware prefetchers follow best. Every output is the same sequence of operations whatever R and
// TT are, so a row's result never depends on which rows of x were batched with it.
// kFar: the far fetch (matmul.h).
template <class V, int R, int TT, bool kFar = false>
inline void tile_bf16(const bf16_t* w, int64_t K, const float* x, int64_t ldx, float* y, int64_t ldy) {
  const int64_t ahead = prefetch_distance<kFar>(2 * R * K);
  using F = typename V::F;
  constexpr int kBlock = 2 * V::kLanes;
  F acc_e[R][TT], acc_o[R][TT];
#pragma GCC unroll 16
  for (int r = 0; r < R; ++r)
#pragma GCC unroll 16
    for (int t = 0; t < TT; ++t) acc_e[r][t] = acc_o[r][t] = V::zero();
  int64_t k = 0;
  for (; k + kBlock <= K; k += kBlock) {
    F xe[TT], xo[TT];
#pragma GCC unroll 16
    for (int t = 0; t < TT; ++t) {
      xe[t] = V::load(x + t * ldx + k);
      xo[t] = V::load(x + t * ldx + k + V::kLanes);
    }
#pragma GCC unroll 16
    for (int r = 0; r < R; ++r) {
      prefetch_weight_line<kFar>(reinterpret_cast<const char*>(w + r * K + k) + ahead);
      F we, wo;
      V::load_bf16_pairs(w + r * K + k, we, wo);
#pragma GCC unroll 16
      for (int t = 0; t < TT; ++t) {
        acc_e[r][t] = V::fma(we, xe[t], acc_e[r][t]);
        acc_o[r][t] = V::fma(wo, xo[t], acc_o[r][t]);
      }
    }
  }
  for (int r = 0; r < R; ++r) {
    for (int t = 0; t < TT; ++t) {
      float s = V::sum(V::add(acc_e[r][t], acc_o[r][t]));
      for (int64_t kk = k; kk < K; ++kk) s += to_f32(w[r * K + kk]) * x[t * ldx + kk];
      y[t * ldy + r] = s;
    }
  }
}

// Same as tile, splitting the rows of x until the R·TT accumulators fit in registers (each part
// re-reads the R weight rows from L1, which is cheap; splitting R instead would re-read x and, for
// BF16, keep more x vectors live than there are registers on AVX2).
template <class V, typename WT, int R, int TT, bool kFar = false>
inline void tile_fit(const WT* w, int64_t K, const float* x, int64_t ldx, float* y, int64_t ldy) {
  constexpr int kAccPerOutput = std::is_same_v<WT, bf16_t> ? 2 : 1;
  if constexpr (TT > 1 && R * TT * kAccPerOutput > V::kMaxAcc) {
    constexpr int kHead = TT / 2;
    tile_fit<V, WT, R, kHead>(w, K, x, ldx, y, ldy);
    tile_fit<V, WT, R, TT - kHead>(w, K, x + kHead * ldx, ldx, y + kHead * ldy, ldy);
  } else if constexpr (std::is_same_v<WT, bf16_t>) {
    tile_bf16<V, R, TT, kFar>(w, K, x, ldx, y, ldy);
  } else {
    tile<V, WT, R, TT>(w, K, x, ldx, y, ldy);
  }
}

// R weight rows against x rows [t0, t1), in groups of up to 4 rows of x.
// far: the far fetch for a single row of x (matmul.h; BF16 only).
template <class V, typename WT, int R>
void rows_block(const WT* w, const MatmulArgs& a, int64_t n, int64_t t0, int64_t t1, bool far = false) {
  const int64_t K = a.K;
  int64_t t = t0;
  for (; t + 4 <= t1; t += 4) tile_fit<V, WT, R, 4>(w, K, a.x + t * a.ldx, a.ldx, a.y + t * a.ldy + n, a.ldy);
  const float* x = a.x + t * a.ldx;
  float* y = a.y + t * a.ldy + n;
  switch (t1 - t) {
    case 3: tile_fit<V, WT, R, 3>(w, K, x, a.ldx, y, a.ldy); break;
    case 2: tile_fit<V, WT, R, 2>(w, K, x, a.ldx, y, a.ldy); break;
    case 1:
      if constexpr (std::is_same_v<WT, bf16_t> && R == 1)
        if (far) return tile_fit<V, WT, R, 1, true>(w, K, x, a.ldx, y, a.ldy);
      tile_fit<V, WT, R, 1>(w, K, x, a.ldx, y, a.ldy);
      break;
    default: break;
  }
}

// Groups of weight rows, each group reused from L1 by every row of x: 4 rows, or for BF16 as many as
// leave room for two rows of x per group (4 with AVX-512, 2 with AVX2), so each widened weight
// vector serves at least two rows. A BF16 decode step (one row of x) walks the weight rows one after
// another instead (see tile_bf16).
template <class V, typename WT>
void matmul_tile(const MatmulArgs& a, int64_t n0, int64_t n1, int64_t t0, int64_t t1) {
  const WT* w = static_cast<const WT*>(a.w);
  constexpr int R = std::is_same_v<WT, bf16_t> ? V::kMaxAcc / 4 : 4;
  int64_t n = n0;
  if (!std::is_same_v<WT, bf16_t> || t1 - t0 > 1)
    for (; n + R <= n1; n += R) rows_block<V, WT, R>(w + n * a.K, a, n, t0, t1);
  // A BF16 decode step's rows longer than the near fetch take the far one (matmul.h).
  const bool far = std::is_same_v<WT, bf16_t> && takes_far_fetch(2 * a.K);
  for (; n < n1; ++n) rows_block<V, WT, 1>(w + n * a.K, a, n, t0, t1, far);
}

// --- Quantized weights (QuantParams): w = (value(code) - zero) · scale, formed in registers as one
// FMA, value · scale + (-zero · scale), per kLanes codes and then used for every row of x. Groups
// hold whole vectors when group % kLanes == 0 (every format tandem loads); other elements go
// through the scalar path.

// The value of code j of a packed row.
template <QuantCode C>
inline float code_value(const uint8_t* row, int64_t j) {
  if constexpr (C == QuantCode::kU4) return static_cast<float>((row[j / 2] >> (4 * (j % 2))) & 15);
  if constexpr (C == QuantCode::kE2M1) return kE2M1ToF32[(row[j / 2] >> (4 * (j % 2))) & 15];
  if constexpr (C == QuantCode::kU8) return static_cast<float>(row[j]);
  if constexpr (C == QuantCode::kF8E4M3) return kF8E4M3ToF32[row[j]];
}

// Codes j .. j + kLanes of a packed row as f32 values (j even for 4-bit codes).
template <class V, QuantCode C>
inline typename V::F code_values(const uint8_t* row, int64_t j) {
  if constexpr (C == QuantCode::kU4) return V::cvt(V::nibbles(row + j / 2));
  if constexpr (C == QuantCode::kE2M1) return V::lut16(V::nibbles(row + j / 2), kE2M1ToF32.data());
  if constexpr (C == QuantCode::kU8) return V::cvt(V::bytes(row + j));
  if constexpr (C == QuantCode::kF8E4M3) {
    // E4M3 bits s eeee mmm moved to f32 bits 31 and 26..20 give 2^(e - 127) · 1.mmm (or the f32
    // subnormal 2^-126 · 0.mmm); times 2^120 that is the E4M3 value exactly, in three integer ops
    // and one multiply instead of a table gather. (The NaN codes 0x7F / 0xFF, which quantizers never
    // write, come out as ±480.)
    const auto b = V::bytes(row + j);
    return V::mul(V::as_float(V::or_(V::shl(V::and_(b, 0x80), 24), V::shl(V::and_(b, 0x7F), 20))),
                  V::set1(0x1p120f));
  }
}

inline float scale_at(const TensorView& s, int64_t i) {
  switch (s.dtype) {
    case DType::BF16: return bf16_to_f32(static_cast<const uint16_t*>(s.data)[i]);
    case DType::F16: return f16_to_f32(static_cast<const uint16_t*>(s.data)[i]);
    default: return static_cast<const float*>(s.data)[i];
  }
}

// The scales s and zero terms zs = -zero · s of rows [n, n + R), [R][n_groups] each, converted a
// vector of groups at a time (one dtype switch per tile instead of one per group and row).
template <class V, QuantCode C, int R>
inline void group_scales(const QuantParams& q, int64_t n, int64_t n_groups, float* s, float* zs) {
  const uint8_t* zeros = static_cast<const uint8_t*>(q.zeros.data);
  for (int r = 0; r < R; ++r) {
    const int64_t base = (n + r) * n_groups;
    float* sr = s + r * n_groups;
    float* zr = zs + r * n_groups;
    int64_t g = 0;
    for (; g + V::kLanes <= n_groups; g += V::kLanes) {
      typename V::F sv;
      switch (q.scales.dtype) {
        case DType::BF16: sv = V::load(static_cast<const bf16_t*>(q.scales.data) + base + g); break;
        case DType::F16: sv = V::load(static_cast<const f16_t*>(q.scales.data) + base + g); break;
        default: sv = V::load(static_cast<const float*>(q.scales.data) + base + g); break;
      }
      const typename V::F zv = zeros ? V::cvt(V::bytes(zeros + base + g)) : V::set1(quant_default_zero(C));
      V::store(sr + g, sv);
      V::store(zr + g, V::mul(V::mul(zv, V::set1(-1.0f)), sv));
    }
    for (; g < n_groups; ++g) {
      sr[g] = scale_at(q.scales, base + g);
      zr[g] = -static_cast<float>(zeros ? zeros[base + g] : quant_default_zero(C)) * sr[g];
    }
  }
}

// Accumulators per output on the generic quantized path: chunk i of a group's whole chunks of kLanes
// codes goes to accumulator i % kQuantChains (a group's last chunks, fewer than kQuantChains, to
// accumulator 0), so a single weight row is not bound by the FMA latency. 8-bit codes on AVX2 take two
// and walk one weight row at a time; everything else one, with four weight rows per tile as the four
// independent chains (on AMD Zen 3 one row with two chains per output ran 1.0-2.2x as fast as four
// rows with one at T = 1, 4 and 16, docs/PERF.md). A function of the kernel family and code alone, so an
// output's bits do not depend on its tile.
template <class V, QuantCode C>
inline constexpr int kQuantChains = V::kLanes == 8 && quant_code_bits(C) == 8 ? 2 : 1;

// y[t·ldy + r] = the sum of output (r, t)'s accumulators in order, plus rest[r][t] when given.
template <class V, int R, int TT, int kChains>
inline void store_chains(const typename V::F (&chain)[R][TT][kChains], float* y, int64_t ldy,
                         const float (*rest)[TT] = nullptr) {
  for (int r = 0; r < R; ++r)
    for (int t = 0; t < TT; ++t) {
      typename V::F sum = chain[r][t][0];
      for (int c = 1; c < kChains; ++c) sum = V::add(sum, chain[r][t][c]);
      y[t * ldy + r] = rest ? V::sum(sum) + rest[r][t] : V::sum(sum);
    }
}

// The 4-bit codes' values before scaling.
inline constexpr std::array<float, 16> kU4Values = {0, 1, 2, 3, 4, 5, 6, 7, 8, 9, 10, 11, 12, 13, 14, 15};

// The table path's weights of one group of a weight row (tile_quant, 4-bit codes): value(c) · s + zs
// for the 16 codes as a lookup table, or, for AVX2's int4 codes (converted, not looked up), s and zs.
template <class V, QuantCode C>
struct TableGroup {
  static constexpr bool kConvert = V::kLanes == 8 && C == QuantCode::kU4;
  typename V::Table table;
  typename V::F sv, zv;
  TableGroup() = default;
  TableGroup(float s, float zs) {
    if constexpr (kConvert) sv = V::set1(s), zv = V::set1(zs);
    else table = V::scaled_table(C == QuantCode::kU4 ? kU4Values.data() : kE2M1ToF32.data(), s, zs);
  }
  // The weights of the 2·kLanes codes in `codes` (kLanes bytes): even-indexed ones (low nibbles) in
  // we, odd-indexed ones in wo.
  void weights(typename V::I codes, typename V::F& we, typename V::F& wo) const {
    if constexpr (kConvert) {
      we = V::fma(V::cvt(V::and_(codes, 15)), sv, zv);
      wo = V::fma(V::cvt(V::shr(codes, 4)), sv, zv);
    } else {
      we = V::lut(codes, table);
      wo = V::lut(V::shr(codes, 4), table);
    }
  }
};

// y[t·ldy + r] = Σ_j W[n + r, j] · x[t·ldx + j] for r < R, t < TT.
//
// 4-bit codes (quant_uses_table): the low and high nibbles of kLanes bytes are the even- and
// odd-indexed codes of a block of 2·kLanes, which meet x packed even/odd (pack_x_even_odd). Per group and
// row a table holds the dequantized value of each of the 16 codes, value(c) · s + zs (the same FMA as
// below), and a lookup by nibble yields the weights. AVX-512: a 16-lane register and one permute, and
// the even and odd products in two accumulators per output. AVX2: one accumulator per output (16
// registers hold no more for 4 rows); int4 codes are converted and scaled as below instead of looked
// up (a lookup permutes across the two 128-bit halves: two permutes and a blend, which on AMD Zen 3
// ran no faster than the generic path, docs/PERF.md), E2M1 codes through a table of two halves.
// kFar: the far fetch (matmul.h).
template <class V, QuantCode C, int R, int TT, bool kFar>
inline void tile_quant(const MatmulArgs& a, int64_t n, const float* x, float* y) {
  using F = typename V::F;
  const QuantParams& q = *a.q;
  const int64_t K = a.K, G = q.group, n_groups = q.groups(K);
  const int64_t row_bytes = K * quant_code_bits(C) / 8;
  const uint8_t* w = static_cast<const uint8_t*>(a.w) + n * row_bytes;
  const int64_t ahead = prefetch_distance<kFar>(R * row_bytes);
  thread_local std::vector<float> scale_buf;
  scale_buf.resize(2 * R * n_groups);
  float* const s = scale_buf.data();
  float* const zs = s + R * n_groups;
  group_scales<V, C, R>(q, n, n_groups, s, zs);
  if constexpr (quant_code_bits(C) == 4) {
    if (quant_uses_table(q, K, V::kLanes)) {
      constexpr int kOdd = V::kLanes == 16 ? 1 : 0;  // the odd products' accumulator
      F chain[R][TT][kOdd + 1] = {};
      for (int64_t g = 0; g < n_groups; ++g) {
        TableGroup<V, C> group[R];
#pragma GCC unroll 16
        for (int r = 0; r < R; ++r) group[r] = TableGroup<V, C>(s[r * n_groups + g], zs[r * n_groups + g]);
        for (int64_t k = g * G, k1 = std::min(K, k + G); k < k1; k += 2 * V::kLanes) {
          F xe[TT], xo[TT];
#pragma GCC unroll 16
          for (int t = 0; t < TT; ++t) {
            xe[t] = V::load(x + t * a.ldx + k);
            xo[t] = V::load(x + t * a.ldx + k + V::kLanes);
          }
#pragma GCC unroll 16
          for (int r = 0; r < R; ++r) {
            const uint8_t* wr = w + r * row_bytes + k / 2;
            prefetch_weight_line<kFar>(wr + ahead);
            F we, wo;
            group[r].weights(V::bytes(wr), we, wo);
#pragma GCC unroll 16
            for (int t = 0; t < TT; ++t) {
              chain[r][t][0] = V::fma(we, xe[t], chain[r][t][0]);
              chain[r][t][kOdd] = V::fma(wo, xo[t], chain[r][t][kOdd]);
            }
          }
        }
      }
      store_chains<V>(chain, y, a.ldy);
      return;
    }
  }
  constexpr int kChains = kQuantChains<V, C>;
  F chain[R][TT][kChains] = {};
  float rest[R][TT] = {};
  for (int64_t g = 0; g < n_groups; ++g) {
    const int64_t k0 = g * G, k1 = std::min(K, k0 + G);
    // The kLanes codes at k of every row, into accumulator c of each output.
    const auto chunk = [&](int64_t k, int c) __attribute__((always_inline)) {
      F xv[TT];
#pragma GCC unroll 16
      for (int t = 0; t < TT; ++t) xv[t] = V::load(x + t * a.ldx + k);
#pragma GCC unroll 16
      for (int r = 0; r < R; ++r) {
        const uint8_t* wr = w + r * row_bytes;
        prefetch_weight_line<kFar>(wr + k * quant_code_bits(C) / 8 + ahead);
        const F wv = V::fma(code_values<V, C>(wr, k), V::set1(s[r * n_groups + g]), V::set1(zs[r * n_groups + g]));
#pragma GCC unroll 16
        for (int t = 0; t < TT; ++t) chain[r][t][c] = V::fma(wv, xv[t], chain[r][t][c]);
      }
    };
    int64_t k = k0;
    for (; k + kChains * V::kLanes <= k1; k += kChains * V::kLanes)
#pragma GCC unroll 16
      for (int c = 0; c < kChains; ++c) chunk(k + c * V::kLanes, c);
    for (; k + V::kLanes <= k1; k += V::kLanes) chunk(k, 0);
    for (; k < k1; ++k)
      for (int r = 0; r < R; ++r) {
        const float wk = code_value<C>(w + r * row_bytes, k) * s[r * n_groups + g] + zs[r * n_groups + g];
        for (int t = 0; t < TT; ++t) rest[r][t] += wk * x[t * a.ldx + k];
      }
  }
  store_chains<V>(chain, y, a.ldy, rest);
}

// tile_quant over TT rows of x, split until the accumulators fit in registers.
template <class V, QuantCode C, int R, int TT, bool kFar = false>
inline void tile_quant_fit(const MatmulArgs& a, int64_t n, const float* x, float* y) {
  // Two accumulators per output on AVX-512's table path (even and odd weights), kQuantChains on the
  // generic path.
  constexpr int kAccPerOutput = quant_code_bits(C) == 4 && V::kLanes == 16 ? 2 : kQuantChains<V, C>;
  if constexpr (TT > 1 && R * TT * kAccPerOutput > V::kMaxAcc) {
    constexpr int kHead = TT / 2;
    tile_quant_fit<V, C, R, kHead>(a, n, x, y);
    tile_quant_fit<V, C, R, TT - kHead>(a, n, x + kHead * a.ldx, y + kHead * a.ldy);
  } else {
    tile_quant<V, C, R, TT, kFar>(a, n, x, y);
  }
}

// far: the far fetch for a single row of x (matmul.h).
template <class V, QuantCode C, int R>
void rows_block_quant(const MatmulArgs& a, int64_t n, int64_t t0, int64_t t1, bool far) {
  int64_t t = t0;
  for (; t + 4 <= t1; t += 4) tile_quant_fit<V, C, R, 4>(a, n, a.x + t * a.ldx, a.y + t * a.ldy + n);
  const float* x = a.x + t * a.ldx;
  float* y = a.y + t * a.ldy + n;
  switch (t1 - t) {
    case 3: tile_quant_fit<V, C, R, 3>(a, n, x, y); break;
    case 2: tile_quant_fit<V, C, R, 2>(a, n, x, y); break;
    case 1:
      if constexpr (R > 1)
        if (far) return tile_quant_fit<V, C, R, 1, true>(a, n, x, y);
      tile_quant_fit<V, C, R, 1>(a, n, x, y);
      break;
    default: break;
  }
}

// --- Many rows of x (prefill, verify blocks of several sequences): a tile of weight rows is decoded
// once into its f32 weights, as tile_quant forms them, and every row of x is multiplied with those,
// instead of decoding the tile again for every four rows of x. Each output goes through the very
// operations of tile_quant (the same FMA into the same chain per chunk of kLanes codes, chunk after
// chunk; the chains wait in memory between chunks of K), so its bits do not depend on which path its
// batch took. Taken on the table path (4-bit codes, quant_uses_table: weights stored even-indexed
// then odd-indexed per block of 2·kLanes codes, as x is packed) and on the generic path where every
// group is whole runs of chunks (then tile_quant has no scalar rest).

// Rows of x from which the decoded path is taken. kDecodedRows (matmul.h) weight rows at a time also
// where outputs have two chains and a tile then takes one row of x on AVX2: faster than two weight
// rows against two rows of x, measured (docs/PERF.md).
inline constexpr int64_t kDecodedMinRows = 24;

// How the decoded path runs a weight: on the table path (kTable) or the generic one. Outputs have
// kChains chains; chunk c of every run of kRun codes goes to chain c (the table path: the even- and
// odd-indexed weights of a block, on AVX-512 into two chains, on AVX2 both into one; the generic path:
// kQuantChains chunks of kLanes), and a chunk of K is whole runs.
template <class V, QuantCode C, bool kTable>
struct DecodedLayout {
  static constexpr int kChains = kTable ? (V::kLanes == 16 ? 2 : 1) : kQuantChains<V, C>;
  static constexpr int64_t kRun = kTable ? 2 * V::kLanes : kChains * V::kLanes;
  static constexpr bool kRest = !kTable;  // tile_quant adds a (here empty) scalar rest on the generic path
};

// Whether the generic path's weight q fits the decoded path: its groups (the last one of a row too)
// are whole runs, so that tile_quant sends chunk j of every group to chain j % kChains and leaves no
// scalar rest.
template <class V, QuantCode C>
inline bool generic_takes_decoded(const QuantParams& q, int64_t K) {
  constexpr int64_t run = DecodedLayout<V, C, false>::kRun;
  return K % run == 0 && (q.group >= K || q.group % run == 0);
}

// Columns [k0, k1) (whole runs) of rows [n, n + R) of the weight as f32, as tile_quant forms them:
// out[r · (k1 - k0) + k - k0].
template <class V, QuantCode C, bool kTable>
void decode_rows_f32(const MatmulArgs& a, int64_t n, int R, int64_t k0, int64_t k1, float* out) {
  const QuantParams& q = *a.q;
  const int64_t K = a.K, G = q.group, n_groups = q.groups(K), row_bytes = K * quant_code_bits(C) / 8;
  thread_local std::vector<float> scale_buf;
  scale_buf.resize(2 * n_groups);
  const float* s = scale_buf.data();
  const float* zs = s + n_groups;
  for (int r = 0; r < R; ++r) {
    group_scales<V, C, 1>(q, n + r, n_groups, scale_buf.data(), scale_buf.data() + n_groups);
    const uint8_t* wr = static_cast<const uint8_t*>(a.w) + (n + r) * row_bytes;
    float* o = out + r * (k1 - k0) - k0;
    if constexpr (kTable) {
      int64_t g = k0 / G;
      TableGroup<V, C> group(s[g], zs[g]);
      for (int64_t k = k0; k < k1; k += 2 * V::kLanes) {
        if (k / G != g) g = k / G, group = TableGroup<V, C>(s[g], zs[g]);
        typename V::F we, wo;
        group.weights(V::bytes(wr + k / 2), we, wo);
        V::store(o + k, we);
        V::store(o + k + V::kLanes, wo);
      }
    } else {
      for (int64_t k = k0; k < k1; k += V::kLanes) {
        const int64_t g = k / G;
        V::store(o + k, V::fma(code_values<V, C>(wr, k), V::set1(s[g]), V::set1(zs[g])));
      }
    }
  }
}

// Rows of x [t, t + TT) (x: their columns from k0) against R decoded rows w of k1 - k0 columns, L a
// DecodedLayout. The chains (R·TT·kChains vectors at `chains`) are carried in from the previous chunk
// of K unless first, and stored for the next unless last, when the sums go to y (with the generic
// path's empty scalar rest added, as tile_quant adds it).
template <class V, class L, int R, int TT>
inline void tile_decoded(const float* w, int64_t k0, int64_t k1, const MatmulArgs& a, const float* x, float* chains,
                         bool first, bool last, float* y) {
  using F = typename V::F;
  constexpr int kChains = L::kChains;
  constexpr int kChunks = L::kRun / V::kLanes;
  const int64_t span = k1 - k0;
  F chain[R][TT][kChains];
#pragma GCC unroll 16
  for (int r = 0; r < R; ++r)
#pragma GCC unroll 16
    for (int t = 0; t < TT; ++t)
#pragma GCC unroll 16
      for (int c = 0; c < kChains; ++c)
        chain[r][t][c] = first ? V::zero() : V::load(chains + ((r * TT + t) * kChains + c) * V::kLanes);
  for (int64_t k = k0; k < k1; k += L::kRun)
#pragma GCC unroll 16
    for (int i = 0; i < kChunks; ++i) {
      const int c = i % kChains;
      const int64_t kc = k - k0 + i * V::kLanes;
      F xv[TT];
#pragma GCC unroll 16
      for (int t = 0; t < TT; ++t) xv[t] = V::load(x + t * a.ldx + kc);
#pragma GCC unroll 16
      for (int r = 0; r < R; ++r) {
        const F wv = V::load(w + r * span + kc);
#pragma GCC unroll 16
        for (int t = 0; t < TT; ++t) chain[r][t][c] = V::fma(wv, xv[t], chain[r][t][c]);
      }
    }
  if (last) {
    if constexpr (L::kRest) {
      const float rest[R][TT] = {};  // the generic path's scalar rest, empty here: added all the same (+0.0f)
      return store_chains<V>(chain, y, a.ldy, rest);
    }
    return store_chains<V>(chain, y, a.ldy);
  }
#pragma GCC unroll 16
  for (int r = 0; r < R; ++r)
#pragma GCC unroll 16
    for (int t = 0; t < TT; ++t)
#pragma GCC unroll 16
      for (int c = 0; c < kChains; ++c) V::store(chains + ((r * TT + t) * kChains + c) * V::kLanes, chain[r][t][c]);
}

// Rows [n, n + R) of the weight against rows [t0, t1) of x, a chunk of K at a time.
template <class V, QuantCode C, bool kTable, int R>
void rows_decoded(const MatmulArgs& a, int64_t n, int64_t t0, int64_t t1, float* w, float* chains) {
  using L = DecodedLayout<V, C, kTable>;
  constexpr int kChains = L::kChains;
  constexpr int TT = std::max(1, V::kMaxAcc / (kDecodedRows * kChains));
  const int64_t span = std::max<int64_t>(L::kRun, kDecodedChunkBytes / (R * 4) / L::kRun * L::kRun);
  for (int64_t k0 = 0; k0 < a.K; k0 += span) {
    const int64_t k1 = std::min(a.K, k0 + span);
    const bool first = k0 == 0, last = k1 == a.K;
    decode_rows_f32<V, C, kTable>(a, n, R, k0, k1, w);
    int64_t t = t0;
    auto tile = [&](auto rows) {
      constexpr int kRows = decltype(rows)::value;
      tile_decoded<V, L, R, kRows>(w, k0, k1, a, a.x + t * a.ldx + k0, chains + (t - t0) * R * kChains * V::kLanes, first,
                                   last, a.y + t * a.ldy + n);
      t += kRows;
    };
    while (t + TT <= t1) tile(std::integral_constant<int, TT>{});
    while (t < t1) tile(std::integral_constant<int, 1>{});
  }
}

template <class V, QuantCode C, bool kTable>
void matmul_decoded(const MatmulArgs& a, int64_t n0, int64_t n1, int64_t t0, int64_t t1) {
  using L = DecodedLayout<V, C, kTable>;
  constexpr int R = kDecodedRows;
  // A chunk of decoded rows (rows_decoded: at most kDecodedChunkBytes, at least one run per row), then
  // the chains of every output, behind a 64-byte aligned start.
  const int64_t w_floats = std::max<int64_t>(kDecodedChunkBytes / 4, R * L::kRun);
  thread_local std::vector<float> buf;
  buf.resize(w_floats + (t1 - t0) * R * L::kChains * V::kLanes + 16);
  float* w = reinterpret_cast<float*>((reinterpret_cast<uintptr_t>(buf.data()) + 63) & ~uintptr_t{63});
  float* chains = w + w_floats;
  int64_t n = n0;
  for (; n + R <= n1; n += R) rows_decoded<V, C, kTable, R>(a, n, t0, t1, w, chains);
  for (; n < n1; ++n) rows_decoded<V, C, kTable, 1>(a, n, t0, t1, w, chains);
}

// Groups of weight rows, shared by every row of x from L1. Unlike a BF16 decode step, a quantized one
// walks four rows at a time where its outputs have one accumulator each: four independent FMA chains
// keep the FMA latency off a single row of x (up to 1.7x the streaming speed at T = 1, docs/PERF.md);
// where they have several (kQuantChains), one row at a time. An output's operations are the same in
// any tile, so its bits do not depend on the tiling.
template <class V, QuantCode C>
void matmul_tile_quant(const MatmulArgs& a, int64_t n0, int64_t n1, int64_t t0, int64_t t1) {
  if (t1 - t0 >= kDecodedMinRows) {
    if constexpr (quant_code_bits(C) == 4)
      if (quant_uses_table(*a.q, a.K, V::kLanes)) return matmul_decoded<V, C, true>(a, n0, n1, t0, t1);
    if (generic_takes_decoded<V, C>(*a.q, a.K)) return matmul_decoded<V, C, false>(a, n0, n1, t0, t1);
  }
  constexpr int R = kQuantChains<V, C> > 1 ? 1 : 4;
  const bool far = R > 1 && takes_far_fetch(R * a.K * quant_code_bits(C) / 8);
  int64_t n = n0;
  for (; n + R <= n1; n += R) rows_block_quant<V, C, R>(a, n, t0, t1, far);
  for (; n < n1; ++n) rows_block_quant<V, C, 1>(a, n, t0, t1, false);
}

inline void matmul_tile_any(const MatmulArgs& a, int64_t n0, int64_t n1, int64_t t0, int64_t t1) {
  if (a.q) {
    switch (a.q->code) {
      case QuantCode::kU4: return matmul_tile_quant<V, QuantCode::kU4>(a, n0, n1, t0, t1);
      case QuantCode::kU8: return matmul_tile_quant<V, QuantCode::kU8>(a, n0, n1, t0, t1);
      case QuantCode::kE2M1: return matmul_tile_quant<V, QuantCode::kE2M1>(a, n0, n1, t0, t1);
      case QuantCode::kF8E4M3: return matmul_tile_quant<V, QuantCode::kF8E4M3>(a, n0, n1, t0, t1);
    }
  }
  switch (a.wtype) {
    case DType::F32: return matmul_tile<V, float>(a, n0, n1, t0, t1);
    case DType::BF16: return matmul_tile<V, bf16_t>(a, n0, n1, t0, t1);
    case DType::F16: return matmul_tile<V, f16_t>(a, n0, n1, t0, t1);
    case DType::F8_E4M3: return matmul_tile<V, f8e4m3_t>(a, n0, n1, t0, t1);
    default: __builtin_unreachable();  // the backend checks the dtype before dispatching
  }
}
