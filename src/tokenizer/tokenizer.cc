// tokenizer.json loader and encoder/decoder. The pipeline follows HF `tokenizers`:
//   1. added tokens with normalized=false are cut out of the raw text (leftmost-longest match,
//      honouring single_word / lstrip / rstrip);
//   2. each remaining segment is normalised, then added tokens with normalized=true are cut out;
//   3. each remaining segment is pre-tokenised into pieces, and the BPE model encodes each piece;
//   4. with add_special_tokens, the post-processor adds its tokens (e.g. <bos>).
// Supported components (anything else is a load-time error naming the component):
//   model: BPE (byte_fallback, fuse_unk, unk_token, continuing_subword_prefix,
//          end_of_word_suffix, ignore_merges; merges as "a b" strings or ["a","b"] pairs)
//   normalizer: Replace (literal), Prepend, NFC, NFD, NFKC, NFKD, Sequence
//   pre_tokenizer: Split (literal or a known regex), ByteLevel, Metaspace, Digits, Sequence
//   post_processor: TemplateProcessing, ByteLevel, BertProcessing, RobertaProcessing, Sequence
//   decoder: Replace, ByteFallback, Fuse, Strip, Metaspace, ByteLevel, Sequence
#include "tokenizer/tokenizer.h"

#include <algorithm>
#include <filesystem>
#include <fstream>
#include <queue>
#include <sstream>
#include <unordered_map>
#include <unordered_set>

#include <nlohmann/json.hpp>

#include "tokenizer/pretokenize_regex.h"
#include "tokenizer/unicode.h"
#include "util/error.h"
#include "util/json_parse.h"

namespace tandem {

using json = nlohmann::json;

namespace {

struct StringHash {
  using is_transparent = void;
  size_t operator()(std::string_view s) const noexcept { return std::hash<std::string_view>{}(s); }
};
using StringMap = std::unordered_map<std::string, int32_t, StringHash, std::equal_to<>>;

// Open-addressing map from a pair of token ids to (rank, merged id).
class MergeMap {
 public:
  struct Value { uint32_t rank; int32_t id; };
  void reserve(size_t n) {
    size_t cap = 16;
    while (cap < n * 2) cap <<= 1;
    keys_.assign(cap, kEmpty);
    values_.assign(cap, Value{0, 0});
    mask_ = cap - 1;
  }
  // Later insertions overwrite earlier ones (as HF's collect into a HashMap does).
  void insert(int32_t a, int32_t b, Value v) {
    uint64_t key = make_key(a, b);
    size_t i = slot(key);
    while (keys_[i] != kEmpty && keys_[i] != key) i = (i + 1) & mask_;
    keys_[i] = key;
    values_[i] = v;
  }
  const Value* find(int32_t a, int32_t b) const {
    if (keys_.empty()) return nullptr;
    uint64_t key = make_key(a, b);
    size_t i = slot(key);
    while (true) {
      if (keys_[i] == key) return &values_[i];
      if (keys_[i] == kEmpty) return nullptr;
      i = (i + 1) & mask_;
    }
  }

 private:
  static constexpr uint64_t kEmpty = ~0ull;
  static uint64_t make_key(int32_t a, int32_t b) {
    return (static_cast<uint64_t>(static_cast<uint32_t>(a)) << 32) | static_cast<uint32_t>(b);
  }
  size_t slot(uint64_t key) const { return static_cast<size_t>((key * 0x9E3779B97F4A7C15ull) >> 20) & mask_; }
  std::vector<uint64_t> keys_;
  std::vector<Value> values_;
  size_t mask_ = 0;
};

// Byte-level (GPT-2) byte <-> printable code point mapping.
struct ByteLevelTables {
  std::string byte_to_utf8[256];
  std::unordered_map<uint32_t, uint8_t> cp_to_byte;
  ByteLevelTables() {
    uint32_t extra = 256;
    for (int b = 0; b < 256; ++b) {
      bool printable = (b >= '!' && b <= '~') || (b >= 0xA1 && b <= 0xAC) || (b >= 0xAE && b <= 0xFF);
      uint32_t cp = printable ? static_cast<uint32_t>(b) : extra++;
      unicode::append_utf8(byte_to_utf8[b], cp);
      cp_to_byte[cp] = static_cast<uint8_t>(b);
    }
  }
};
const ByteLevelTables& byte_level() {
  static const ByteLevelTables tables;
  return tables;
}

void replace_all(std::string& s, std::string_view from, std::string_view to) {
  if (from.empty()) return;
  std::string out;
  size_t pos = 0;
  while (true) {
    size_t hit = s.find(from, pos);
    if (hit == std::string::npos) break;
    out.append(s, pos, hit - pos);
    out.append(to);
    pos = hit + from.size();
  }
  if (pos == 0) return;
  out.append(s, pos, std::string::npos);
  s = std::move(out);
}

// Byte trie over added-token texts for leftmost-longest matching.
class Trie {
 public:
  Trie() { nodes_.emplace_back(); }
  void insert(std::string_view text, int32_t id) {
    if (text.empty()) return;
    size_t node = 0;
    for (unsigned char c : text) {
      auto& ch = nodes_[node].children;
      auto it = std::lower_bound(ch.begin(), ch.end(), c, [](const auto& p, unsigned char v) { return p.first < v; });
      if (it != ch.end() && it->first == c) {
        node = it->second;
      } else {
        size_t next = nodes_.size();
        ch.insert(it, {c, static_cast<uint32_t>(next)});
        nodes_.emplace_back();
        node = next;
      }
    }
    nodes_[node].id = id;
    first_byte_[static_cast<unsigned char>(text[0])] = true;
    empty_ = false;
  }
  bool empty() const { return empty_; }
  // Longest token starting at s[pos]: returns its length (0 if none) and sets *id.
  size_t longest_at(std::string_view s, size_t pos, int32_t* id) const {
    if (!first_byte_[static_cast<unsigned char>(s[pos])]) return 0;
    size_t node = 0, best = 0;
    for (size_t i = pos; i < s.size(); ++i) {
      const auto& ch = nodes_[node].children;
      unsigned char c = static_cast<unsigned char>(s[i]);
      auto it = std::lower_bound(ch.begin(), ch.end(), c, [](const auto& p, unsigned char v) { return p.first < v; });
      if (it == ch.end() || it->first != c) break;
      node = it->second;
      if (nodes_[node].id >= 0) {
        best = i + 1 - pos;
        *id = nodes_[node].id;
      }
    }
    return best;
  }

 private:
  struct Node {
    std::vector<std::pair<unsigned char, uint32_t>> children;
    int32_t id = -1;
  };
  std::vector<Node> nodes_;
  bool first_byte_[256] = {};
  bool empty_ = true;
};

struct AddedToken {
  std::string content;
  int32_t id;
  bool single_word = false, lstrip = false, rstrip = false, normalized = false, special = false;
};

enum class SplitBehavior { kRemoved, kIsolated, kMergedWithPrevious, kMergedWithNext, kContiguous };

struct NormStep {
  enum Kind { kReplace, kPrepend, kUnicode } kind;
  std::string a, b;  // Replace: pattern, content; Prepend: text
  unicode::NormForm form = unicode::NormForm::NFC;
};

struct PreStep {
  enum Kind { kSplitLiteral, kSplitRegex, kByteLevel, kMetaspace, kDigits } kind;
  std::string literal;
  RegexKind regex = RegexKind::kGpt2;
  SplitBehavior behavior = SplitBehavior::kIsolated;
  bool invert = false;
  bool add_prefix_space = false, use_regex = true;        // ByteLevel
  std::string replacement;                                 // Metaspace
  enum Prepend { kAlways, kFirst, kNever } prepend = kAlways;
  bool split = true;
  bool individual_digits = false;                          // Digits
};

struct DecStep {
  enum Kind { kReplace, kByteFallback, kFuse, kStrip, kMetaspace, kByteLevel } kind;
  std::string a, b;  // Replace pattern/content; Strip/Metaspace char
  uint32_t strip_char = 0;
  size_t start = 0, stop = 0;
  bool metaspace_strip_first = true;
};

// A piece of text during pre-tokenisation. at_origin: starts at offset 0 of the original input.
struct Piece {
  std::string text;
  bool at_origin;
};

// Split `piece` given matches covering it; pushes results to out (empty pieces dropped).
void split_piece(const Piece& piece, const std::vector<std::pair<size_t, size_t>>& matches, SplitBehavior behavior,
                 bool invert, std::vector<Piece>& out) {
  const std::string& s = piece.text;
  if (s.empty()) return;
  struct Part { size_t b, e; bool match; };
  std::vector<Part> parts;
  size_t prev = 0;
  for (auto [b, e] : matches) {
    if (prev != b) parts.push_back({prev, b, false});
    parts.push_back({b, e, true});
    prev = e;
  }
  if (prev != s.size()) parts.push_back({prev, s.size(), false});
  if (invert)
    for (auto& p : parts) p.match = !p.match;
  struct Out { size_t b, e; bool remove; };
  std::vector<Out> res;
  switch (behavior) {
    case SplitBehavior::kIsolated:
      for (auto& p : parts) res.push_back({p.b, p.e, false});
      break;
    case SplitBehavior::kRemoved:
      for (auto& p : parts) res.push_back({p.b, p.e, p.match});
      break;
    case SplitBehavior::kContiguous: {
      bool prev_match = false;
      for (auto& p : parts) {
        if (p.match == prev_match && !res.empty()) res.back().e = p.e;
        else res.push_back({p.b, p.e, false});
        prev_match = p.match;
      }
      break;
    }
    case SplitBehavior::kMergedWithPrevious: {
      bool prev_match = false;
      for (auto& p : parts) {
        if (p.match && !prev_match && !res.empty()) res.back().e = p.e;
        else res.push_back({p.b, p.e, false});
        prev_match = p.match;
      }
      break;
    }
    case SplitBehavior::kMergedWithNext: {
      bool prev_match = false;
      for (auto it = parts.rbegin(); it != parts.rend(); ++it) {
        if (it->match && !prev_match && !res.empty()) res.back().b = it->b;
        else res.push_back({it->b, it->e, false});
        prev_match = it->match;
      }
      std::reverse(res.begin(), res.end());
      break;
    }
  }
  for (auto& r : res) {
    if (r.remove || r.b == r.e) continue;
    out.push_back({s.substr(r.b, r.e - r.b), piece.at_origin && r.b == 0});
  }
}

}  // namespace

struct Tokenizer::Impl {
  std::string name;  // file name for error messages
  // model
  StringMap vocab;
  std::vector<std::string> vocab_r;  // id -> model token ("" if none)
  std::vector<bool> vocab_r_present;
  MergeMap merges;
  std::optional<std::string> unk_token;
  bool byte_fallback = false, fuse_unk = false, ignore_merges = false;
  std::optional<std::string> subword_prefix, word_suffix;
  int32_t byte_ids[256];
  // added tokens
  std::vector<AddedToken> added;
  std::unordered_map<int32_t, size_t> added_by_id;
  StringMap added_by_content;
  std::unordered_set<std::string> special_contents;
  Trie raw_trie, normalized_trie;
  // pipeline
  std::vector<NormStep> normalizers;
  std::vector<PreStep> pre_tokenizers;
  std::vector<int32_t> post_before, post_after;
  bool has_decoder = false;
  std::vector<DecStep> decoders;
  // config
  int32_t max_id = -1;
  std::string bos, eos, chat_template;
  int32_t bos_id = -1;
  std::vector<int32_t> eos_ids;
  bool adds_bos = false;

  // ---- encoding ----
  std::string normalize(std::string s) const {
    for (const auto& n : normalizers) {
      switch (n.kind) {
        case NormStep::kReplace: replace_all(s, n.a, n.b); break;
        case NormStep::kPrepend:
          if (!s.empty()) s.insert(0, n.a);
          break;
        case NormStep::kUnicode: s = unicode::normalize(s, n.form); break;
      }
    }
    return s;
  }

  void pre_tokenize(Piece piece, std::vector<Piece>& pieces) const {
    pieces.clear();
    pieces.push_back(std::move(piece));
    std::vector<Piece> next;
    std::vector<std::pair<size_t, size_t>> matches;
    for (const auto& step : pre_tokenizers) {
      next.clear();
      for (auto& p : pieces) {
        matches.clear();
        switch (step.kind) {
          case PreStep::kSplitLiteral: {
            if (step.literal.empty()) {
              next.push_back(std::move(p));
              continue;
            }
            size_t pos = 0;
            while ((pos = p.text.find(step.literal, pos)) != std::string::npos) {
              matches.push_back({pos, pos + step.literal.size()});
              pos += step.literal.size();
            }
            split_piece(p, matches, step.behavior, step.invert, next);
            break;
          }
          case PreStep::kSplitRegex:
            regex_matches(step.regex, p.text, matches);
            split_piece(p, matches, step.behavior, step.invert, next);
            break;
          case PreStep::kByteLevel: {
            if (step.add_prefix_space && (p.text.empty() || p.text[0] != ' ')) p.text.insert(0, " ");
            std::vector<Piece> parts;
            if (step.use_regex) {
              regex_matches(RegexKind::kGpt2, p.text, matches);
              split_piece(p, matches, SplitBehavior::kIsolated, false, parts);
            } else {
              parts.push_back(std::move(p));
            }
            const auto& bl = byte_level();
            for (auto& part : parts) {
              std::string mapped;
              mapped.reserve(part.text.size() * 2);
              for (unsigned char c : part.text) mapped += bl.byte_to_utf8[c];
              next.push_back({std::move(mapped), part.at_origin});
            }
            break;
          }
          case PreStep::kMetaspace: {
            replace_all(p.text, " ", step.replacement);
            bool starts = p.text.compare(0, step.replacement.size(), step.replacement) == 0;
            if (!starts && (step.prepend == PreStep::kAlways || (step.prepend == PreStep::kFirst && p.at_origin)))
              p.text.insert(0, step.replacement);
            if (step.split) {
              size_t pos = 0;
              while ((pos = p.text.find(step.replacement, pos)) != std::string::npos) {
                matches.push_back({pos, pos + step.replacement.size()});
                pos += step.replacement.size();
              }
              split_piece(p, matches, SplitBehavior::kMergedWithNext, false, next);
            } else if (!p.text.empty()) {
              next.push_back(std::move(p));
            }
            break;
          }
          case PreStep::kDigits: {
            size_t n;
            for (size_t i = 0; i < p.text.size(); i += n) {
              uint32_t c = unicode::decode(p.text, i, &n);
              if (!unicode::is_number(c)) continue;
              if (!step.individual_digits && !matches.empty() && matches.back().second == i)
                matches.back().second = i + n;
              else
                matches.push_back({i, i + n});
            }
            split_piece(p, matches,
                        step.individual_digits ? SplitBehavior::kIsolated : SplitBehavior::kContiguous, false, next);
            break;
          }
        }
      }
      pieces.swap(next);
    }
  }

  static void regex_matches(RegexKind kind, std::string_view s, std::vector<std::pair<size_t, size_t>>& out) {
    size_t i = 0;
    while (i < s.size()) {
      size_t m = match_regex_at(kind, s, i);
      if (m > 0) {
        out.push_back({i, i + m});
        i += m;
      } else {
        i += unicode::sequence_length(static_cast<unsigned char>(s[i]));
      }
    }
  }

  int32_t unk_id() const {
    auto it = vocab.find(*unk_token);
    if (it == vocab.end()) fail("{}: unk_token '{}' is not in the vocabulary", name, *unk_token);
    return it->second;
  }

  void bpe(std::string_view word, std::vector<int32_t>& out) const {
    if (word.empty()) return;
    if (ignore_merges) {
      auto it = vocab.find(word);
      if (it != vocab.end()) {
        out.push_back(it->second);
        return;
      }
    }
    struct Sym { int32_t id; int32_t prev, next; uint32_t len; };
    std::vector<Sym> syms;
    syms.reserve(word.size());
    auto add = [&](int32_t id, uint32_t len) {
      int32_t idx = static_cast<int32_t>(syms.size());
      syms.push_back({id, idx - 1, -1, len});
      if (idx > 0) syms[idx - 1].next = idx;
    };
    int32_t unk = -1;
    uint32_t unk_len = 0;
    std::string buf;
    size_t n;
    for (size_t i = 0; i < word.size(); i += n) {
      n = unicode::sequence_length(static_cast<unsigned char>(word[i]));
      if (i + n > word.size()) n = word.size() - i;
      std::string_view s = word.substr(i, n);
      bool first = i == 0, last = i + n >= word.size();
      if ((!first && subword_prefix) || (last && word_suffix)) {
        buf.clear();
        if (!first && subword_prefix) buf += *subword_prefix;
        buf += s;
        if (last && word_suffix) buf += *word_suffix;
        s = buf;
      }
      auto it = vocab.find(s);
      if (it != vocab.end()) {
        if (unk >= 0) {
          add(unk, unk_len);
          unk = -1;
        }
        add(it->second, static_cast<uint32_t>(n));
        continue;
      }
      if (byte_fallback) {
        bool all = true;
        for (unsigned char c : s) all = all && byte_ids[c] >= 0;
        if (all) {
          for (unsigned char c : s) add(byte_ids[c], 1);
          continue;
        }
      }
      if (unk_token) {
        if (unk >= 0 && fuse_unk) {
          unk_len += static_cast<uint32_t>(n);
        } else {
          if (unk >= 0) add(unk, unk_len);
          unk = unk_id();
          unk_len = static_cast<uint32_t>(n);
        }
      }
    }
    if (unk >= 0) add(unk, unk_len);

    struct Merge { uint32_t rank; int32_t pos; int32_t id; };
    auto cmp = [](const Merge& a, const Merge& b) { return a.rank != b.rank ? a.rank > b.rank : a.pos > b.pos; };
    std::vector<Merge> heap_storage;
    heap_storage.reserve(syms.size());
    for (size_t i = 0; i + 1 < syms.size(); ++i) {
      if (const auto* m = merges.find(syms[i].id, syms[i + 1].id))
        heap_storage.push_back({m->rank, static_cast<int32_t>(i), m->id});
    }
    std::priority_queue<Merge, std::vector<Merge>, decltype(cmp)> queue(cmp, std::move(heap_storage));
    while (!queue.empty()) {
      Merge top = queue.top();
      queue.pop();
      Sym& cur = syms[top.pos];
      if (cur.len == 0 || cur.next == -1) continue;
      int32_t next_pos = cur.next;
      Sym right = syms[next_pos];
      const auto* m = merges.find(cur.id, right.id);
      if (!m || m->id != top.id) continue;  // stale entry
      cur.id = top.id;
      cur.len += right.len;
      cur.next = right.next;
      syms[next_pos].len = 0;
      if (right.next >= 0) syms[right.next].prev = top.pos;
      if (cur.prev >= 0) {
        if (const auto* pm = merges.find(syms[cur.prev].id, cur.id)) queue.push({pm->rank, cur.prev, pm->id});
      }
      if (cur.next >= 0) {
        if (const auto* nm = merges.find(cur.id, syms[cur.next].id)) queue.push({nm->rank, top.pos, nm->id});
      }
    }
    for (const auto& s : syms)
      if (s.len != 0) out.push_back(s.id);
  }

  // Splits `text` on added tokens from `trie` (HF AddedVocabulary::find_matches). Segments with
  // id >= 0 are added tokens; others are text.
  struct Segment {
    size_t b, e;
    int32_t id;
  };
  void find_added(std::string_view text, const Trie& trie, std::vector<Segment>& out) const {
    out.clear();
    if (text.empty() || trie.empty()) {
      out.push_back({0, text.size(), -1});
      return;
    }
    size_t start_offset = 0;
    size_t i = 0;
    while (i < text.size()) {
      int32_t id = -1;
      size_t len = trie.longest_at(text, i, &id);
      if (len == 0) {
        ++i;
        continue;
      }
      size_t start = i, stop = i + len;
      i = stop;  // matches never overlap (the automaton resumes after the match)
      const AddedToken& tok = added[added_by_id.at(id)];
      if (tok.single_word) {
        bool start_space = start == 0 || !ends_with_word(text.substr(0, start));
        bool stop_space = stop == text.size() || !starts_with_word(text.substr(stop));
        if (!start_space || !stop_space) continue;
      }
      if (tok.lstrip) {
        size_t ns = start;
        while (ns > 0) {
          size_t p = ns - 1;
          while (p > 0 && (static_cast<unsigned char>(text[p]) & 0xC0) == 0x80) --p;
          size_t n;
          if (!unicode::is_whitespace(unicode::decode(text, p, &n))) break;
          ns = p;
        }
        start = std::max(ns, start_offset);
      }
      if (tok.rstrip) {
        size_t n;
        while (stop < text.size() && unicode::is_whitespace(unicode::decode(text, stop, &n))) stop += n;
      }
      if (start_offset < start) out.push_back({start_offset, start, -1});
      out.push_back({start, stop, id});
      start_offset = stop;
    }
    if (start_offset != text.size()) out.push_back({start_offset, text.size(), -1});
  }
  static bool ends_with_word(std::string_view s) {
    if (s.empty()) return false;
    size_t p = s.size() - 1;
    while (p > 0 && (static_cast<unsigned char>(s[p]) & 0xC0) == 0x80) --p;
    size_t n;
    return unicode::is_word(unicode::decode(s, p, &n));
  }
  static bool starts_with_word(std::string_view s) {
    if (s.empty()) return false;
    size_t n;
    return unicode::is_word(unicode::decode(s, 0, &n));
  }

  std::vector<int32_t> encode(std::string_view input, bool add_special) const {
    std::string valid;
    if (!unicode::is_valid_utf8(input)) {
      valid = unicode::to_valid_utf8(input);
      input = valid;
    }
    std::vector<int32_t> ids;
    if (add_special) ids = post_before;
    std::vector<Segment> raw_segs, norm_segs;
    std::vector<Piece> pieces;
    find_added(input, raw_trie, raw_segs);
    for (const auto& rs : raw_segs) {
      if (rs.id >= 0) {
        ids.push_back(rs.id);
        continue;
      }
      std::string normalized = normalize(std::string(input.substr(rs.b, rs.e - rs.b)));
      find_added(normalized, normalized_trie, norm_segs);
      for (const auto& ns : norm_segs) {
        if (ns.id >= 0) {
          ids.push_back(ns.id);
          continue;
        }
        pre_tokenize({normalized.substr(ns.b, ns.e - ns.b), rs.b == 0 && ns.b == 0}, pieces);
        for (const auto& p : pieces) bpe(p.text, ids);
      }
    }
    if (add_special) ids.insert(ids.end(), post_after.begin(), post_after.end());
    return ids;
  }

  // ---- decoding ----
  const std::string* token_of(int32_t id) const {
    auto it = added_by_id.find(id);
    if (it != added_by_id.end()) return &added[it->second].content;
    if (id >= 0 && static_cast<size_t>(id) < vocab_r.size() && vocab_r_present[id]) return &vocab_r[id];
    return nullptr;
  }

  std::string decode(std::span<const int32_t> ids, bool skip_special) const {
    std::vector<std::string> tokens;
    tokens.reserve(ids.size());
    for (int32_t id : ids) {
      const std::string* t = token_of(id);
      if (!t) continue;
      if (skip_special && special_contents.count(*t)) continue;
      tokens.push_back(*t);
    }
    if (!has_decoder) {
      std::string out;
      for (size_t i = 0; i < tokens.size(); ++i) {
        if (i) out += ' ';
        out += tokens[i];
      }
      return out;
    }
    for (const auto& d : decoders) apply_decoder(d, tokens);
    std::string out;
    for (const auto& t : tokens) out += t;
    return out;
  }

  static void apply_decoder(const DecStep& d, std::vector<std::string>& tokens) {
    switch (d.kind) {
      case DecStep::kReplace:
        for (auto& t : tokens) replace_all(t, d.a, d.b);
        break;
      case DecStep::kFuse: {
        std::string all;
        for (auto& t : tokens) all += t;
        tokens.assign(1, std::move(all));
        break;
      }
      case DecStep::kByteFallback: {
        std::vector<std::string> out;
        std::string bytes;
        auto flush = [&] {
          if (bytes.empty()) return;
          if (unicode::is_valid_utf8(bytes)) {
            out.push_back(bytes);
          } else {
            for (size_t i = 0; i < bytes.size(); ++i) out.push_back("\xEF\xBF\xBD");
          }
          bytes.clear();
        };
        for (auto& t : tokens) {
          int v = -1;
          if (t.size() == 6 && t.compare(0, 3, "<0x") == 0 && t[5] == '>') v = parse_hex2(t[3], t[4]);
          if (v >= 0) {
            bytes.push_back(static_cast<char>(v));
          } else {
            flush();
            out.push_back(std::move(t));
          }
        }
        flush();
        tokens.swap(out);
        break;
      }
      case DecStep::kStrip:
        for (auto& t : tokens) {
          std::vector<uint32_t> cps;
          std::vector<size_t> offs;
          size_t n;
          for (size_t i = 0; i < t.size(); i += n) {
            offs.push_back(i);
            cps.push_back(unicode::decode(t, i, &n));
          }
          offs.push_back(t.size());
          size_t start_cut = 0;
          for (size_t i = 0; i < d.start && i < cps.size(); ++i) {
            if (cps[i] == d.strip_char) start_cut = i + 1;
            else break;
          }
          size_t stop_cut = cps.size();
          for (size_t i = 0; i < d.stop && i < cps.size(); ++i) {
            size_t index = cps.size() - i - 1;
            if (cps[index] == d.strip_char) stop_cut = index;
            else break;
          }
          if (stop_cut < start_cut) stop_cut = start_cut;
          t = t.substr(offs[start_cut], offs[stop_cut] - offs[start_cut]);
        }
        break;
      case DecStep::kMetaspace:
        for (size_t i = 0; i < tokens.size(); ++i) {
          replace_all(tokens[i], d.a, (i == 0 && d.metaspace_strip_first) ? "" : " ");
        }
        break;
      case DecStep::kByteLevel: {
        const auto& bl = byte_level();
        std::string bytes;
        for (auto& t : tokens) {
          size_t start = bytes.size();
          bool ok = true;
          size_t n;
          for (size_t i = 0; i < t.size(); i += n) {
            uint32_t cp = unicode::decode(t, i, &n);
            auto it = bl.cp_to_byte.find(cp);
            if (it == bl.cp_to_byte.end()) {
              ok = false;
              break;
            }
            bytes.push_back(static_cast<char>(it->second));
          }
          if (!ok) {
            bytes.resize(start);
            bytes += t;
          }
        }
        tokens.assign(1, unicode::to_valid_utf8(bytes));
        break;
      }
    }
  }
  static int parse_hex2(char a, char b) {
    auto h = [](char c) -> int {
      if (c >= '0' && c <= '9') return c - '0';
      if (c >= 'a' && c <= 'f') return c - 'a' + 10;
      if (c >= 'A' && c <= 'F') return c - 'A' + 10;
      return -1;
    };
    int x = h(a), y = h(b);
    return (x < 0 || y < 0) ? -1 : x * 16 + y;
  }
};

// ---------------------------------------------------------------------------------------------
// Loading

namespace {

using Impl = Tokenizer::Impl;

std::string read_file(const std::filesystem::path& p) {
  std::ifstream f(p, std::ios::binary);
  if (!f) fail("cannot open tokenizer file {}", p.string());
  std::ostringstream ss;
  ss << f.rdbuf();
  if (f.bad()) fail("error reading tokenizer file {}", p.string());
  return ss.str();
}

const json& field(const json& j, const char* key, const std::string& where) {
  if (!j.is_object()) fail("{}: expected an object", where);
  auto it = j.find(key);
  if (it == j.end()) fail("{}: missing field '{}'", where, key);
  return *it;
}
std::string str_field(const json& j, const char* key, const std::string& where) {
  const json& v = field(j, key, where);
  if (!v.is_string()) fail("{}: field '{}' must be a string", where, key);
  return v.get<std::string>();
}
bool bool_or(const json& j, const char* key, bool dflt) {
  auto it = j.find(key);
  if (it == j.end() || it->is_null()) return dflt;
  if (!it->is_boolean()) fail("field '{}' must be a boolean", key);
  return it->get<bool>();
}
std::optional<std::string> opt_str(const json& j, const char* key) {
  auto it = j.find(key);
  if (it == j.end() || it->is_null()) return std::nullopt;
  if (!it->is_string()) fail("field '{}' must be a string or null", key);
  return it->get<std::string>();
}

// Pattern {"String": s} or {"Regex": r}; returns (is_regex, text).
std::pair<bool, std::string> parse_pattern(const json& j, const std::string& where) {
  if (j.is_object()) {
    if (j.contains("String")) return {false, str_field(j, "String", where)};
    if (j.contains("Regex")) return {true, str_field(j, "Regex", where)};
  }
  fail("{}: pattern must be {{\"String\": ...}} or {{\"Regex\": ...}}", where);
}

// A regex that is really a literal (no metacharacters) can be matched as a string.
bool regex_is_literal(const std::string& r) {
  return r.find_first_of("\\^$.|?*+()[]{}") == std::string::npos;
}

uint32_t single_char(const std::string& s, const std::string& where) {
  size_t n;
  if (s.empty()) fail("{}: expected a single character", where);
  uint32_t c = unicode::decode(s, 0, &n);
  if (n != s.size()) fail("{}: expected a single character, got '{}'", where, s);
  return c;
}

void parse_normalizer(Impl& t, const json& j, const std::string& where) {
  if (j.is_null()) return;
  std::string type = str_field(j, "type", where);
  std::string here = where + " (" + type + ")";
  if (type == "Sequence") {
    const json& list = field(j, "normalizers", here);
    if (!list.is_array()) fail("{}: 'normalizers' must be an array", here);
    for (const auto& n : list) parse_normalizer(t, n, here);
  } else if (type == "Replace") {
    auto [is_regex, pat] = parse_pattern(field(j, "pattern", here), here);
    if (is_regex && !regex_is_literal(pat))
      fail("{}: Replace with regex pattern '{}' is not supported", here, pat);
    t.normalizers.push_back({NormStep::kReplace, pat, str_field(j, "content", here)});
  } else if (type == "Prepend") {
    t.normalizers.push_back({NormStep::kPrepend, str_field(j, "prepend", here), ""});
  } else if (type == "NFC" || type == "NFD" || type == "NFKC" || type == "NFKD") {
    NormStep s{NormStep::kUnicode, "", ""};
    s.form = type == "NFC" ? unicode::NormForm::NFC
             : type == "NFD" ? unicode::NormForm::NFD
             : type == "NFKC" ? unicode::NormForm::NFKC
                              : unicode::NormForm::NFKD;
    t.normalizers.push_back(s);
  } else {
    fail("{}: unsupported normalizer type '{}'", where, type);
  }
}

SplitBehavior parse_behavior(const std::string& b, const std::string& where) {
  if (b == "Removed") return SplitBehavior::kRemoved;
  if (b == "Isolated") return SplitBehavior::kIsolated;
  if (b == "MergedWithPrevious") return SplitBehavior::kMergedWithPrevious;
  if (b == "MergedWithNext") return SplitBehavior::kMergedWithNext;
  if (b == "Contiguous") return SplitBehavior::kContiguous;
  fail("{}: unknown split behavior '{}'", where, b);
}

void parse_pre_tokenizer(Impl& t, const json& j, const std::string& where) {
  if (j.is_null()) return;
  std::string type = str_field(j, "type", where);
  std::string here = where + " (" + type + ")";
  PreStep s{};
  if (type == "Sequence") {
    const json& list = field(j, "pretokenizers", here);
    if (!list.is_array()) fail("{}: 'pretokenizers' must be an array", here);
    for (const auto& p : list) parse_pre_tokenizer(t, p, here);
    return;
  } else if (type == "Split") {
    auto [is_regex, pat] = parse_pattern(field(j, "pattern", here), here);
    s.behavior = parse_behavior(str_field(j, "behavior", here), here);
    s.invert = bool_or(j, "invert", false);
    if (!is_regex || regex_is_literal(pat)) {
      s.kind = PreStep::kSplitLiteral;
      s.literal = pat;
    } else {
      auto kind = recognise_regex(pat);
      if (!kind)
        fail("{}: unsupported Split regex '{}' (only the GPT-2, Llama 3 and Qwen 2 patterns are implemented)",
             here, pat);
      s.kind = PreStep::kSplitRegex;
      s.regex = *kind;
    }
  } else if (type == "ByteLevel") {
    s.kind = PreStep::kByteLevel;
    s.add_prefix_space = bool_or(j, "add_prefix_space", true);
    s.use_regex = bool_or(j, "use_regex", true);
  } else if (type == "Metaspace") {
    s.kind = PreStep::kMetaspace;
    s.replacement = str_field(j, "replacement", here);
    single_char(s.replacement, here + " replacement");
    if (auto scheme = opt_str(j, "prepend_scheme")) {
      if (*scheme == "always") s.prepend = PreStep::kAlways;
      else if (*scheme == "first") s.prepend = PreStep::kFirst;
      else if (*scheme == "never") s.prepend = PreStep::kNever;
      else fail("{}: unknown prepend_scheme '{}'", here, *scheme);
    } else {
      s.prepend = bool_or(j, "add_prefix_space", true) ? PreStep::kAlways : PreStep::kNever;
    }
    s.split = bool_or(j, "split", true);
  } else if (type == "Digits") {
    s.kind = PreStep::kDigits;
    s.individual_digits = bool_or(j, "individual_digits", false);
  } else {
    fail("{}: unsupported pre_tokenizer type '{}'", where, type);
  }
  t.pre_tokenizers.push_back(std::move(s));
}

void parse_decoder(Impl& t, const json& j, const std::string& where) {
  if (j.is_null()) return;
  t.has_decoder = true;
  std::string type = str_field(j, "type", where);
  std::string here = where + " (" + type + ")";
  DecStep d{};
  if (type == "Sequence") {
    const json& list = field(j, "decoders", here);
    if (!list.is_array()) fail("{}: 'decoders' must be an array", here);
    for (const auto& x : list) parse_decoder(t, x, here);
    return;
  } else if (type == "Replace") {
    auto [is_regex, pat] = parse_pattern(field(j, "pattern", here), here);
    if (is_regex && !regex_is_literal(pat)) fail("{}: Replace with regex pattern '{}' is not supported", here, pat);
    d.kind = DecStep::kReplace;
    d.a = pat;
    d.b = str_field(j, "content", here);
  } else if (type == "ByteFallback") {
    d.kind = DecStep::kByteFallback;
  } else if (type == "Fuse") {
    d.kind = DecStep::kFuse;
  } else if (type == "Strip") {
    d.kind = DecStep::kStrip;
    d.strip_char = single_char(str_field(j, "content", here), here + " content");
    const json& start = field(j, "start", here);
    const json& stop = field(j, "stop", here);
    if (!start.is_number_unsigned() || !stop.is_number_unsigned()) fail("{}: start/stop must be unsigned", here);
    d.start = start.get<size_t>();
    d.stop = stop.get<size_t>();
  } else if (type == "Metaspace") {
    d.kind = DecStep::kMetaspace;
    d.a = str_field(j, "replacement", here);
    single_char(d.a, here + " replacement");
    if (auto scheme = opt_str(j, "prepend_scheme")) d.metaspace_strip_first = *scheme != "never";
    else d.metaspace_strip_first = bool_or(j, "add_prefix_space", true);
  } else if (type == "ByteLevel") {
    d.kind = DecStep::kByteLevel;
  } else {
    fail("{}: unsupported decoder type '{}'", where, type);
  }
  t.decoders.push_back(std::move(d));
}

int32_t lookup_any(const Impl& t, const std::string& token) {
  auto a = t.added_by_content.find(token);
  if (a != t.added_by_content.end()) return a->second;
  auto v = t.vocab.find(token);
  return v == t.vocab.end() ? -1 : v->second;
}

void parse_post_processor(Impl& t, const json& j, const std::string& where) {
  if (j.is_null()) return;
  std::string type = str_field(j, "type", where);
  std::string here = where + " (" + type + ")";
  if (type == "Sequence") {
    const json& list = field(j, "processors", here);
    if (!list.is_array()) fail("{}: 'processors' must be an array", here);
    for (const auto& x : list) parse_post_processor(t, x, here);
  } else if (type == "ByteLevel") {
    // Only adjusts offsets; ids are unchanged.
  } else if (type == "TemplateProcessing") {
    const json& single = field(j, "single", here);
    const json& specials = field(j, "special_tokens", here);
    if (!single.is_array() || !specials.is_object()) fail("{}: malformed template", here);
    bool seen_seq = false;
    for (const auto& piece : single) {
      if (piece.is_object() && piece.contains("Sequence")) {
        if (seen_seq) fail("{}: 'single' template has two sequences", here);
        seen_seq = true;
      } else if (piece.is_object() && piece.contains("SpecialToken")) {
        std::string name = str_field(piece["SpecialToken"], "id", here);
        auto it = specials.find(name);
        if (it == specials.end()) fail("{}: special token '{}' missing from special_tokens", here, name);
        const json& ids = field(*it, "ids", here);
        if (!ids.is_array()) fail("{}: special token '{}' ids must be an array", here, name);
        for (const auto& id : ids) {
          if (!id.is_number_integer()) fail("{}: special token '{}' ids must be integers", here, name);
          (seen_seq ? t.post_after : t.post_before).push_back(id.get<int32_t>());
        }
      } else {
        fail("{}: template pieces must be Sequence or SpecialToken", here);
      }
    }
  } else if (type == "BertProcessing" || type == "RobertaProcessing") {
    const json& cls = field(j, "cls", here);
    const json& sep = field(j, "sep", here);
    if (!cls.is_array() || cls.size() != 2 || !sep.is_array() || sep.size() != 2 || !cls[1].is_number_integer() ||
        !sep[1].is_number_integer())
      fail("{}: cls/sep must be [token, id]", here);
    t.post_before.push_back(cls[1].get<int32_t>());
    t.post_after.push_back(sep[1].get<int32_t>());
  } else {
    fail("{}: unsupported post_processor type '{}'", where, type);
  }
}

void parse_model(Impl& t, const json& m, const std::string& where) {
  if (!m.is_object()) fail("{}: 'model' must be an object", where);
  std::string type = m.contains("type") ? str_field(m, "type", where + " model") : (m.contains("merges") ? "BPE" : "");
  if (type != "BPE") fail("{}: unsupported model type '{}' (only BPE is implemented)", where, type);
  const json& vocab = field(m, "vocab", where + " model");
  if (!vocab.is_object()) fail("{}: model.vocab must be an object", where);
  t.vocab.reserve(vocab.size());
  for (auto it = vocab.begin(); it != vocab.end(); ++it) {
    if (!it.value().is_number_integer()) fail("{}: vocab id of '{}' is not an integer", where, it.key());
    int64_t id = it.value().get<int64_t>();
    if (id < 0 || id > (1 << 30)) fail("{}: vocab id {} of '{}' is out of range", where, id, it.key());
    t.vocab[it.key()] = static_cast<int32_t>(id);
    t.max_id = std::max<int32_t>(t.max_id, static_cast<int32_t>(id));
  }
  // Ids are dense in real vocabularies; a bound keeps a hostile file from allocating gigabytes.
  if (static_cast<size_t>(t.max_id) > 16 * t.vocab.size() + 65536)
    fail("{}: vocab id {} is implausibly large for a vocabulary of {} entries", where, t.max_id, t.vocab.size());
  t.vocab_r.assign(t.max_id + 1, std::string());
  t.vocab_r_present.assign(t.max_id + 1, false);
  for (const auto& [tok, id] : t.vocab) {
    t.vocab_r[id] = tok;
    t.vocab_r_present[id] = true;
  }
  t.unk_token = opt_str(m, "unk_token");
  t.byte_fallback = bool_or(m, "byte_fallback", false);
  t.fuse_unk = bool_or(m, "fuse_unk", false);
  t.ignore_merges = bool_or(m, "ignore_merges", false);
  t.subword_prefix = opt_str(m, "continuing_subword_prefix");
  t.word_suffix = opt_str(m, "end_of_word_suffix");
  if (m.contains("dropout") && !m["dropout"].is_null() && m["dropout"].is_number() && m["dropout"].get<double>() != 0.0)
    fail("{}: BPE dropout is not supported", where);
  for (int b = 0; b < 256; ++b) {
    char code[8];
    std::snprintf(code, sizeof code, "<0x%02X>", b);
    auto it = t.vocab.find(std::string_view(code));
    t.byte_ids[b] = it == t.vocab.end() ? -1 : it->second;
  }
  const json& merges = m.contains("merges") ? m["merges"] : json::array();
  if (!merges.is_array()) fail("{}: model.merges must be an array", where);
  t.merges.reserve(merges.size());
  size_t prefix_len = t.subword_prefix ? t.subword_prefix->size() : 0;
  std::string a, b, joined;
  uint32_t rank = 0;
  for (const auto& mj : merges) {
    if (mj.is_string()) {
      const std::string& line = mj.get_ref<const std::string&>();
      size_t sp = line.find(' ');
      if (sp == std::string::npos || line.find(' ', sp + 1) != std::string::npos)
        fail("{}: merge {} ('{}') is not of the form \"a b\"", where, rank + 1, line);
      a = line.substr(0, sp);
      b = line.substr(sp + 1);
    } else if (mj.is_array() && mj.size() == 2 && mj[0].is_string() && mj[1].is_string()) {
      a = mj[0].get<std::string>();
      b = mj[1].get<std::string>();
    } else {
      fail("{}: merge {} must be a string \"a b\" or a pair [\"a\", \"b\"]", where, rank + 1);
    }
    auto ia = t.vocab.find(a), ib = t.vocab.find(b);
    if (ia == t.vocab.end()) fail("{}: merge {} uses '{}', which is not in the vocabulary", where, rank + 1, a);
    if (ib == t.vocab.end()) fail("{}: merge {} uses '{}', which is not in the vocabulary", where, rank + 1, b);
    if (b.size() < prefix_len) fail("{}: merge {} has a token shorter than the subword prefix", where, rank + 1);
    joined = a;
    joined.append(b, prefix_len, std::string::npos);
    auto ij = t.vocab.find(joined);
    if (ij == t.vocab.end())
      fail("{}: merge {} produces '{}', which is not in the vocabulary", where, rank + 1, joined);
    t.merges.insert(ia->second, ib->second, {rank, ij->second});
    ++rank;
  }
}

void add_added_token(Impl& t, AddedToken tok) {
  if (t.added_by_content.count(tok.content)) return;
  if (tok.id < 0 || static_cast<size_t>(tok.id) > 16 * (t.vocab.size() + t.added.size()) + 65536)
    fail("{}: added token '{}' has an invalid id {}", t.name, tok.content, tok.id);
  if (t.added_by_id.count(tok.id)) return;
  t.added_by_id[tok.id] = t.added.size();
  t.added_by_content[tok.content] = tok.id;
  if (tok.special) t.special_contents.insert(tok.content);
  t.max_id = std::max(t.max_id, tok.id);
  t.added.push_back(std::move(tok));
}

AddedToken parse_added_token(const json& a, const std::string& where) {
  AddedToken tok;
  tok.content = str_field(a, "content", where);
  tok.single_word = bool_or(a, "single_word", false);
  tok.lstrip = bool_or(a, "lstrip", false);
  tok.rstrip = bool_or(a, "rstrip", false);
  tok.special = bool_or(a, "special", false);
  tok.normalized = bool_or(a, "normalized", !tok.special);
  return tok;
}

// bos_token / eos_token in tokenizer_config.json: a string or {"content": ...}.
std::string config_token(const json& cfg, const char* key) {
  auto it = cfg.find(key);
  if (it == cfg.end() || it->is_null()) return "";
  if (it->is_string()) return it->get<std::string>();
  if (it->is_object() && it->contains("content") && (*it)["content"].is_string())
    return (*it)["content"].get<std::string>();
  return "";
}

}  // namespace

Tokenizer Tokenizer::from_json(std::string_view tokenizer_json, std::string_view config_json, const std::string& name) {
  auto impl = std::make_shared<Impl>();
  Impl& t = *impl;
  t.name = name;
  try {
    json root = parse_json(tokenizer_json);
    if (!root.is_object()) fail("{}: top level must be a JSON object", name);
    parse_model(t, field(root, "model", name), name);
    if (root.contains("added_tokens")) {
      const json& list = root["added_tokens"];
      if (!list.is_array()) fail("{}: 'added_tokens' must be an array", name);
      for (const auto& a : list) {
        AddedToken tok = parse_added_token(a, name + " added_tokens");
        const json& id = field(a, "id", name + " added_tokens");
        if (!id.is_number_integer()) fail("{}: added token '{}' id must be an integer", name, tok.content);
        tok.id = id.get<int32_t>();
        add_added_token(t, std::move(tok));
      }
    }
    parse_normalizer(t, root.value("normalizer", json()), name + " normalizer");
    parse_pre_tokenizer(t, root.value("pre_tokenizer", json()), name + " pre_tokenizer");
    parse_post_processor(t, root.value("post_processor", json()), name + " post_processor");
    parse_decoder(t, root.value("decoder", json()), name + " decoder");

    json cfg;
    if (!config_json.empty()) {
      try {
        cfg = parse_json(config_json);
      } catch (const json::exception& e) {
        fail("tokenizer_config.json next to {}: invalid JSON: {}", name, e.what());
      }
      if (!cfg.is_object()) fail("tokenizer_config.json next to {}: top level must be an object", name);
      if (auto it = cfg.find("added_tokens_decoder"); it != cfg.end() && it->is_object()) {
        for (auto e = it->begin(); e != it->end(); ++e) {
          AddedToken tok = parse_added_token(e.value(), "tokenizer_config.json added_tokens_decoder");
          try {
            tok.id = std::stoi(e.key());
          } catch (const std::exception&) {
            fail("tokenizer_config.json: added_tokens_decoder key '{}' is not an id", e.key());
          }
          add_added_token(t, std::move(tok));
        }
      }
      t.bos = config_token(cfg, "bos_token");
      t.eos = config_token(cfg, "eos_token");
      if (auto it = cfg.find("chat_template"); it != cfg.end()) {
        if (it->is_string()) {
          t.chat_template = it->get<std::string>();
        } else if (it->is_array()) {
          for (const auto& e : *it)
            if (e.is_object() && e.value("name", "") == "default" && e.contains("template") && e["template"].is_string())
              t.chat_template = e["template"].get<std::string>();
        }
      }
    }
  } catch (const json::exception& e) {
    fail("{}: invalid tokenizer JSON: {}", name, e.what());
  }

  // Added-token tries: normalized tokens are matched in their normalised form.
  for (const auto& tok : t.added) {
    if (tok.normalized) t.normalized_trie.insert(t.normalize(tok.content), tok.id);
    else t.raw_trie.insert(tok.content, tok.id);
  }
  if (!t.bos.empty()) t.bos_id = lookup_any(t, t.bos);
  if (!t.eos.empty()) {
    int32_t id = lookup_any(t, t.eos);
    if (id >= 0) t.eos_ids.push_back(id);
  }
  t.adds_bos = t.bos_id >= 0 && !t.post_before.empty() && t.post_before.front() == t.bos_id;
  Tokenizer tk;
  tk.impl_ = std::move(impl);
  return tk;
}

Tokenizer Tokenizer::load(const std::string& path) {
  namespace fs = std::filesystem;
  fs::path p(path);
  std::error_code ec;
  if (fs::is_directory(p, ec)) p /= "tokenizer.json";
  if (!fs::exists(p, ec)) fail("tokenizer file {} does not exist", p.string());
  std::string text = read_file(p);
  fs::path dir = p.parent_path();
  std::string config;
  fs::path cfg_path = dir / "tokenizer_config.json";
  if (fs::exists(cfg_path, ec)) config = read_file(cfg_path);
  Tokenizer tk = from_json(text, config, p.string());
  auto impl = std::const_pointer_cast<Impl>(tk.impl_);
  fs::path jinja = dir / "chat_template.jinja";
  if (fs::exists(jinja, ec)) impl->chat_template = read_file(jinja);
  fs::path gen = dir / "generation_config.json";
  if (fs::exists(gen, ec)) {
    try {
      json g = parse_json(read_file(gen));
      auto add = [&](const json& v) {
        if (v.is_number_integer()) {
          int32_t id = v.get<int32_t>();
          if (std::find(impl->eos_ids.begin(), impl->eos_ids.end(), id) == impl->eos_ids.end())
            impl->eos_ids.push_back(id);
        }
      };
      if (g.is_object() && g.contains("eos_token_id")) {
        const json& e = g["eos_token_id"];
        if (e.is_array())
          for (const auto& v : e) add(v);
        else
          add(e);
      }
    } catch (const json::exception& e) {
      fail("{}: invalid JSON: {}", gen.string(), e.what());
    }
  }
  return tk;
}

std::vector<int32_t> Tokenizer::encode(std::string_view text, bool add_special_tokens) const {
  return impl_->encode(text, add_special_tokens);
}
std::string Tokenizer::decode(std::span<const int32_t> ids, bool skip_special_tokens) const {
  return impl_->decode(ids, skip_special_tokens);
}
std::string Tokenizer::token_text(int32_t id) const {
  const std::string* t = impl_->token_of(id);
  return t ? *t : std::string();
}
std::string Tokenizer::token_bytes(int32_t id) const {
  const std::string* t = impl_->token_of(id);
  if (!t) return {};
  if (is_special(id)) return *t;
  std::string s = *t;
  if (!impl_->has_decoder) return s;
  for (const auto& d : impl_->decoders) {
    switch (d.kind) {
      case DecStep::kReplace: replace_all(s, d.a, d.b); break;
      case DecStep::kMetaspace: replace_all(s, d.a, " "); break;
      case DecStep::kByteFallback:
        if (s.size() == 6 && s.compare(0, 3, "<0x") == 0 && s[5] == '>') {
          int v = Impl::parse_hex2(s[3], s[4]);
          if (v >= 0) s.assign(1, static_cast<char>(v));
        }
        break;
      case DecStep::kByteLevel: {
        const auto& bl = byte_level();
        std::string bytes;
        size_t n;
        bool ok = true;
        for (size_t i = 0; i < s.size() && ok; i += n) {
          auto it = bl.cp_to_byte.find(unicode::decode(s, i, &n));
          if (it == bl.cp_to_byte.end()) ok = false;
          else bytes.push_back(static_cast<char>(it->second));
        }
        if (ok) s = std::move(bytes);
        break;
      }
      case DecStep::kFuse:
      case DecStep::kStrip: break;
    }
  }
  return s;
}
int32_t Tokenizer::vocab_size() const { return impl_->max_id + 1; }
std::optional<int32_t> Tokenizer::token_id(std::string_view token) const {
  auto a = impl_->added_by_content.find(token);
  if (a != impl_->added_by_content.end()) return a->second;
  auto v = impl_->vocab.find(token);
  if (v != impl_->vocab.end()) return v->second;
  return std::nullopt;
}
int32_t Tokenizer::bos_id() const { return impl_->bos_id; }
std::vector<int32_t> Tokenizer::eos_ids() const { return impl_->eos_ids; }
bool Tokenizer::is_special(int32_t id) const {
  auto it = impl_->added_by_id.find(id);
  return it != impl_->added_by_id.end() && impl_->added[it->second].special;
}
const std::string& Tokenizer::chat_template() const { return impl_->chat_template; }
std::string Tokenizer::bos_token() const { return impl_->bos; }
std::string Tokenizer::eos_token() const { return impl_->eos; }
bool Tokenizer::add_bos_token() const { return impl_->adds_bos; }

// ---------------------------------------------------------------------------------------------
// Streaming

StreamDecoder::StreamDecoder(const Tokenizer& tokenizer, bool skip_special)
    : tokenizer_(&tokenizer), skip_special_(skip_special) {}

static bool ends_with_replacement(const std::string& s) {
  return s.size() >= 3 && s.compare(s.size() - 3, 3, "\xEF\xBF\xBD") == 0;
}

std::string StreamDecoder::decode_window() const {
  if (anchor_.empty()) return tokenizer_->decode(window_, skip_special_);
  std::vector<int32_t> ids = anchor_;
  ids.insert(ids.end(), window_.begin(), window_.end());
  return tokenizer_->decode(ids, skip_special_);
}

std::string StreamDecoder::push(int32_t id) {
  window_.push_back(id);
  std::string text = decode_window();
  if (text.size() <= prefix_.size() || ends_with_replacement(text)) return "";
  std::string out;
  if (text.compare(0, prefix_.size(), prefix_) == 0) {
    out = text.substr(prefix_.size());
  } else {
    // The decoder rewrote earlier text (not the case for the supported decoders); emit the part
    // that differs from what was already emitted as best we can.
    size_t common = 0;
    while (common < prefix_.size() && prefix_[common] == text[common]) ++common;
    out = text.substr(std::max(common, prefix_.size()));
  }
  if (anchor_.empty()) {
    anchor_.swap(window_);
    window_.clear();
    prefix_ids_ = 0;
  } else {
    window_.erase(window_.begin(), window_.begin() + static_cast<std::ptrdiff_t>(prefix_ids_));
    prefix_ids_ = window_.size();
  }
  prefix_ = decode_window();
  return out;
}

std::string StreamDecoder::flush() {
  std::string text = decode_window();
  std::string out = text.size() > prefix_.size() ? text.substr(prefix_.size()) : std::string();
  anchor_.clear();
  window_.clear();
  prefix_ids_ = 0;
  prefix_.clear();
  return out;
}

}  // namespace tandem
