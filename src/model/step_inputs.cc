#include "model/step_inputs.h"

#include <algorithm>
#include <bit>
#include <unordered_map>

namespace tandem {

std::vector<int32_t> stage_block_tables(StagedInputs& in, std::span<const std::vector<int32_t>* const> row_tables,
                                        TensorView* view) {
  std::vector<const std::vector<int32_t>*> tables;
  std::unordered_map<const std::vector<int32_t>*, int32_t> index;
  std::vector<int32_t> row_table(row_tables.size());
  size_t max_blocks = 1;
  for (size_t r = 0; r < row_tables.size(); ++r) {
    auto [it, added] = index.try_emplace(row_tables[r], static_cast<int32_t>(tables.size()));
    if (added) {
      tables.push_back(row_tables[r]);
      max_blocks = std::max(max_blocks, row_tables[r]->size());
    }
    row_table[r] = it->second;
  }
  // The width is rounded up to a power of two so that a growing context changes the step's shape (and
  // needs a new recorded step) only at every doubling.
  const int64_t S = std::max<int64_t>(1, static_cast<int64_t>(tables.size())),
                M = static_cast<int64_t>(std::bit_ceil(max_blocks));
  std::span<int32_t> flat = in.add<int32_t>(view, DType::I32, {S, M});
  std::fill(flat.begin(), flat.end(), -1);  // past a table's end: never inside a row's key range
  for (size_t s = 0; s < tables.size(); ++s) std::copy(tables[s]->begin(), tables[s]->end(), flat.begin() + s * M);
  return row_table;
}

GroupTableIndices stage_group_block_tables(StagedInputs& in, std::span<const BlockTables* const> row_tables,
                                           KvGroup sliding_group, TensorView* full_view, TensorView* sliding_view) {
  auto group_tables = [&](KvGroup g) {
    std::vector<const std::vector<int32_t>*> tables(row_tables.size());
    for (size_t r = 0; r < row_tables.size(); ++r) tables[r] = &(*row_tables[r])[g];
    return tables;
  };
  GroupTableIndices out;
  out.full = stage_block_tables(in, group_tables(KvGroup::full), full_view);
  out.sliding = sliding_group == KvGroup::full ? out.full
                                               : stage_block_tables(in, group_tables(sliding_group), sliding_view);
  return out;
}

void upload_floats(Tensor& dst, const std::vector<float>& values) {
  TensorView& v = dst.resize(DType::F32, {static_cast<int64_t>(values.size())});
  upload_to(dst.backend(), values.data(), v);
}

}  // namespace tandem
