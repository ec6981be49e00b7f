// Host-side planning shared by the target and the drafter: the distinct block tables of a step's
// rows, staged as one [S, max_blocks] I32 table (vLLM's flat block table, not per-row pointers).
#pragma once
#include <cstdint>
#include <span>
#include <vector>

#include "backend/staged_inputs.h"
#include "model/kv_cache.h"

namespace tandem {

// Stages the distinct tables among row_tables into *view ([S, bit_ceil(longest)], padded with -1) and
// returns, per row, its table's index.
std::vector<int32_t> stage_block_tables(StagedInputs& in, std::span<const std::vector<int32_t>* const> row_tables,
                                        TensorView* view);

// Both KV groups' tables of a step's rows (row_tables[r]: row r's sequence), staged by
// stage_block_tables into *full_view and *sliding_view, with each row's table index per group. When
// the sliding layers read the full group (`sliding_group` full: no sliding layers of their own) the
// sliding indices are the full ones and nothing more is staged.
struct GroupTableIndices {
  std::vector<int32_t> full, sliding;
};
GroupTableIndices stage_group_block_tables(StagedInputs& in, std::span<const BlockTables* const> row_tables,
                                           KvGroup sliding_group, TensorView* full_view, TensorView* sliding_view);

// Uploads host floats into a backend tensor [n] (RoPE frequencies and other load-time constants).
void upload_floats(Tensor& dst, const std::vector<float>& values);

}  // namespace tandem
