// Host-side planning shared by the target and the drafter: the distinct block tables of a step's
// rows, staged as one [S, max_blocks] I32 table (vLLM's flat block table, not per-row pointers).
#pragma once
#include <cstdint>
#include <span>
#include <vector>

#include "backend/staged_inputs.h"

namespace tandem {

// Stages the distinct tables among row_tables into *view ([S, bit_ceil(longest)], padded with -1) and
// returns, per row, its table's index.
std::vector<int32_t> stage_block_tables(StagedInputs& in, std::span<const std::vector<int32_t>* const> row_tables,
                                        TensorView* view);

// Uploads host floats into a backend tensor [n] (RoPE frequencies and other load-time constants).
void upload_floats(Tensor& dst, const std::vector<float>& values);

}  // namespace tandem
