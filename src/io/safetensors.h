// Read-only access to safetensors checkpoints over mmap: one file, or a sharded set described by
// model.safetensors.index.json. Tensors stay in their stored dtype; nothing is copied.
#pragma once
#include <cstdint>
#include <map>
#include <memory>
#include <string>
#include <vector>

#include "util/dtype.h"

namespace tandem {

struct TensorInfo {
  std::string name;
  DType dtype = DType::F32;
  std::vector<int64_t> shape;
  const void* data = nullptr;
  size_t nbytes = 0;
  std::string file;  // the file that holds it, for error messages

  int64_t numel() const;
  std::string shape_string() const;  // "[262144, 2816]"
};

// One mmapped .safetensors file. The header is validated against the file size on open.
class SafetensorsFile {
 public:
  static std::unique_ptr<SafetensorsFile> open(const std::string& path);
  ~SafetensorsFile();
  const std::map<std::string, TensorInfo>& tensors() const { return tensors_; }
  const std::map<std::string, std::string>& metadata() const { return metadata_; }

 private:
  SafetensorsFile() = default;
  std::string path_;
  void* map_ = nullptr;
  size_t size_ = 0;
  std::map<std::string, TensorInfo> tensors_;
  std::map<std::string, std::string> metadata_;
  std::vector<std::vector<uint64_t>> aligned_copies_;  // tensors whose mapped data was misaligned
};

// All tensors of a checkpoint directory (model.safetensors, or the shards of the index), by name.
class WeightStore {
 public:
  // path: a directory (uses model.safetensors.index.json if present, else every *.safetensors in
  // it) or a single .safetensors file.
  static WeightStore open(const std::string& path);

  const TensorInfo* find(const std::string& name) const;
  // Throws tandem::Error naming the tensor and the checkpoint when absent.
  const TensorInfo& get(const std::string& name) const;
  // As get(), and also checks the shape ("tensor X in FILE has shape [..], expected [..]").
  const TensorInfo& get(const std::string& name, const std::vector<int64_t>& shape) const;
  const std::map<std::string, TensorInfo>& tensors() const { return tensors_; }
  const std::string& path() const { return path_; }

 private:
  std::string path_;
  std::vector<std::shared_ptr<SafetensorsFile>> files_;
  std::map<std::string, TensorInfo> tensors_;
};

std::string shape_string(const std::vector<int64_t>& shape);

}  // namespace tandem
