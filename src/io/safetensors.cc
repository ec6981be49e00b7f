#include "io/safetensors.h"

#include <fcntl.h>
#include <sys/mman.h>
#include <sys/stat.h>
#include <unistd.h>

#include <algorithm>
#include <cstring>
#include <filesystem>
#include <nlohmann/json.hpp>

#include "io/json_file.h"
#include "util/error.h"
#include "util/json_parse.h"

namespace tandem {
namespace fs = std::filesystem;
using nlohmann::json;

int64_t TensorInfo::numel() const {
  int64_t n = 1;
  for (int64_t d : shape) n *= d;
  return n;
}

std::string shape_string(const std::vector<int64_t>& shape) {
  std::string s = "[";
  for (size_t i = 0; i < shape.size(); ++i) s += (i ? ", " : "") + std::to_string(shape[i]);
  return s + "]";
}

std::string TensorInfo::shape_string() const { return tandem::shape_string(shape); }

std::unique_ptr<SafetensorsFile> SafetensorsFile::open(const std::string& path) {
  std::unique_ptr<SafetensorsFile> f(new SafetensorsFile());
  f->path_ = path;
  const int fd = ::open(path.c_str(), O_RDONLY);
  if (fd < 0) fail("cannot open {}: {}", path, std::strerror(errno));
  struct stat st {};
  if (fstat(fd, &st) != 0) {
    ::close(fd);
    fail("cannot stat {}: {}", path, std::strerror(errno));
  }
  f->size_ = static_cast<size_t>(st.st_size);
  if (f->size_ < 8) {
    ::close(fd);
    fail("{} is not a safetensors file: {} bytes, shorter than the 8-byte header length", path, f->size_);
  }
  f->map_ = mmap(nullptr, f->size_, PROT_READ, MAP_PRIVATE, fd, 0);
  ::close(fd);
  if (f->map_ == MAP_FAILED) {
    f->map_ = nullptr;
    fail("cannot mmap {}: {}", path, std::strerror(errno));
  }
  const auto* base = static_cast<const uint8_t*>(f->map_);
  uint64_t header_len = 0;
  std::memcpy(&header_len, base, 8);  // little-endian on every platform tandem supports
  if (header_len > f->size_ - 8) {
    fail("{} is truncated or not a safetensors file: header length {} exceeds the file size {}", path,
         header_len, f->size_);
  }
  json header;
  try {
    header = parse_json(base + 8, base + 8 + header_len);
  } catch (const json::exception& e) {
    fail("{}: malformed safetensors header: {}", path, e.what());
  }
  if (!header.is_object()) fail("{}: malformed safetensors header: not a JSON object", path);
  const uint64_t data_begin = 8 + header_len;
  const uint64_t data_size = f->size_ - data_begin;
  for (auto& [name, entry] : header.items()) {
    if (name == "__metadata__") {
      if (entry.is_object())
        for (auto& [k, v] : entry.items())
          if (v.is_string()) f->metadata_[k] = v.get<std::string>();
      continue;
    }
    try {
      TensorInfo t;
      t.name = name;
      t.file = path;
      const std::string dt = entry.at("dtype").get<std::string>();
      if (!parse_dtype(dt, &t.dtype)) fail("{}: tensor {} has unsupported dtype {}", path, name, dt);
      t.shape = entry.at("shape").get<std::vector<int64_t>>();
      const auto offsets = entry.at("data_offsets").get<std::vector<uint64_t>>();
      if (offsets.size() != 2 || offsets[0] > offsets[1])
        fail("{}: tensor {} has invalid data_offsets", path, name);
      for (int64_t d : t.shape)
        if (d < 0) fail("{}: tensor {} has a negative dimension", path, name);
      if (offsets[1] > data_size)
        fail("{} is truncated: tensor {} ends at byte {} of a {}-byte data section", path, name,
             offsets[1], data_size);
      t.nbytes = offsets[1] - offsets[0];
      if (t.nbytes != static_cast<uint64_t>(t.numel()) * dtype_size(t.dtype))
        fail("{}: tensor {} has {} bytes but shape {} of {} needs {}", path, name, t.nbytes,
             t.shape_string(), dtype_name(t.dtype), t.numel() * dtype_size(t.dtype));
      t.data = base + data_begin + offsets[0];
      // The format does not promise alignment (the header length is arbitrary). A tensor whose data
      // is not aligned to its element size is copied once into aligned memory, so kernels and
      // scalar reads never see a misaligned pointer.
      if (reinterpret_cast<uintptr_t>(t.data) % dtype_size(t.dtype) != 0) {
        auto& copy = f->aligned_copies_.emplace_back((t.nbytes + 7) / 8);
        std::memcpy(copy.data(), t.data, t.nbytes);
        t.data = copy.data();
      }
      f->tensors_.emplace(name, std::move(t));
    } catch (const json::exception& e) {
      fail("{}: malformed header entry for tensor {}: {}", path, name, e.what());
    }
  }
  return f;
}

SafetensorsFile::~SafetensorsFile() {
  if (map_) munmap(map_, size_);
}

WeightStore WeightStore::open(const std::string& path) {
  WeightStore store;
  store.path_ = path;
  std::vector<std::string> files;
  if (fs::is_directory(path)) {
    const fs::path index = fs::path(path) / "model.safetensors.index.json";
    if (fs::exists(index)) {
      const json j = read_json_file(index.string());  // a malformed document: an error naming the file
      try {
        for (auto& [name, file] : j.at("weight_map").items()) {
          const std::string f = (fs::path(path) / file.get<std::string>()).string();
          if (std::find(files.begin(), files.end(), f) == files.end()) files.push_back(f);
        }
      } catch (const json::exception& e) {
        fail("{}: malformed index: {}", index.string(), e.what());
      }
    } else {
      for (auto& e : fs::directory_iterator(path))
        if (e.path().extension() == ".safetensors") files.push_back(e.path().string());
      std::sort(files.begin(), files.end());
    }
    if (files.empty()) fail("no .safetensors files in {}", path);
  } else if (fs::exists(path)) {
    files.push_back(path);
  } else {
    fail("checkpoint {} does not exist", path);
  }
  for (const auto& f : files) {
    auto file = std::shared_ptr<SafetensorsFile>(SafetensorsFile::open(f).release());
    for (const auto& [name, info] : file->tensors()) {
      if (store.tensors_.count(name)) fail("tensor {} appears in two shards of {}", name, path);
      store.tensors_.emplace(name, info);
    }
    store.files_.push_back(std::move(file));
  }
  return store;
}

const TensorInfo* WeightStore::find(const std::string& name) const {
  auto it = tensors_.find(name);
  return it == tensors_.end() ? nullptr : &it->second;
}

const TensorInfo& WeightStore::get(const std::string& name) const {
  if (const TensorInfo* t = find(name)) return *t;
  fail("checkpoint {} has no tensor {}", path_, name);
}

const TensorInfo& WeightStore::get(const std::string& name, const std::vector<int64_t>& shape) const {
  const TensorInfo& t = get(name);
  if (t.shape != shape)
    fail("tensor {} in {} has shape {}, expected {}", name, t.file, t.shape_string(), shape_string(shape));
  return t;
}

}  // namespace tandem
