#include "tokenizer/pretokenize_regex.h"

#include "tokenizer/unicode.h"

namespace tandem {
namespace {

constexpr std::string_view kGpt2Pattern =
    R"('s|'t|'re|'ve|'m|'ll|'d| ?\p{L}+| ?\p{N}+| ?[^\s\p{L}\p{N}]+|\s+(?!\S)|\s+)";
constexpr std::string_view kLlama3Pattern =
    R"((?i:'s|'t|'re|'ve|'m|'ll|'d)|[^\r\n\p{L}\p{N}]?\p{L}+|\p{N}{1,3}| ?[^\s\p{L}\p{N}]+[\r\n]*|\s*[\r\n]+|\s+(?!\S)|\s+)";
constexpr std::string_view kQwen2Pattern =
    R"((?i:'s|'t|'re|'ve|'m|'ll|'d)|[^\r\n\p{L}\p{N}]?\p{L}+|\p{N}| ?[^\s\p{L}\p{N}]+[\r\n]*|\s*[\r\n]+|\s+(?!\S)|\s+)";

// A cursor over code points.
struct Text {
  std::string_view s;
  // Code point at byte offset i (0 past the end), with its length.
  uint32_t at(size_t i, size_t* len) const {
    if (i >= s.size()) {
      *len = 0;
      return 0;
    }
    unsigned char c = static_cast<unsigned char>(s[i]);
    if (c < 0x80) {
      *len = 1;
      return c;
    }
    return unicode::decode(s, i, len);
  }
  bool end(size_t i) const { return i >= s.size(); }
};

bool is_l(uint32_t c) { return unicode::is_letter(c); }
bool is_n(uint32_t c) { return unicode::is_number(c); }
bool is_s(uint32_t c) { return unicode::is_whitespace(c); }
bool is_crlf(uint32_t c) { return c == '\r' || c == '\n'; }
bool is_punct(uint32_t c) { return !is_s(c) && !is_l(c) && !is_n(c); }  // [^\s\p{L}\p{N}]

// Advances over the maximal run of characters satisfying pred, at most max_count of them.
template <typename Pred>
size_t run(const Text& t, size_t i, Pred pred, size_t max_count = SIZE_MAX) {
  size_t n, count = 0;
  while (count < max_count && !t.end(i) && pred(t.at(i, &n))) {
    i += n;
    ++count;
  }
  return i;
}

// 's|'t|'re|'ve|'m|'ll|'d, optionally case-insensitive (Unicode simple case folding: 's' also
// matches U+017F LATIN SMALL LETTER LONG S, 'k'-style special cases do not occur in these words).
size_t contraction(const Text& t, size_t i, bool icase) {
  if (t.end(i) || t.s[i] != '\'') return 0;
  size_t n1, n2;
  uint32_t a = t.at(i + 1, &n1);
  if (n1 == 0) return 0;
  auto fold = [icase](uint32_t c) -> uint32_t {
    if (!icase) return c;
    if (c >= 'A' && c <= 'Z') return c + 32;
    if (c == 0x17F) return 's';
    return c;
  };
  uint32_t fa = fold(a);
  if (fa == 's' || fa == 't' || fa == 'm' || fa == 'd') return 1 + n1;
  uint32_t b = t.at(i + 1 + n1, &n2);
  if (n2 == 0) return 0;
  uint32_t fb = fold(b);
  if ((fa == 'r' && fb == 'e') || (fa == 'v' && fb == 'e') || (fa == 'l' && fb == 'l')) return 1 + n1 + n2;
  return 0;
}

// \s+(?!\S) then \s+ : the whitespace run, minus its last character when a non-space follows
// and the run is longer than one character (in which case \s+ takes the whole run anyway).
size_t whitespace_tail(const Text& t, size_t i) {
  size_t n;
  uint32_t c = t.at(i, &n);
  if (n == 0 || !is_s(c)) return 0;
  size_t j = run(t, i, is_s);
  if (t.end(j)) return j - i;
  // Followed by a non-space: \s+(?!\S) backtracks by one character if it can.
  size_t last = i, k = i;
  while (k < j) {
    last = k;
    t.at(k, &n);
    k += n;
  }
  if (last > i) return last - i;
  return j - i;  // single whitespace char: the plain \s+ alternative
}

size_t match_gpt2(const Text& t, size_t i) {
  if (size_t m = contraction(t, i, false)) return m;
  size_t n;
  uint32_t c = t.at(i, &n);
  size_t start = i;
  size_t after_space = i;
  if (c == ' ') {
    size_t n2;
    uint32_t c2 = t.at(i + 1, &n2);
    if (n2) {
      if (is_l(c2)) return run(t, i + 1, is_l) - start;
      if (is_n(c2)) return run(t, i + 1, is_n) - start;
      if (is_punct(c2)) return run(t, i + 1, is_punct) - start;
    }
  } else {
    if (is_l(c)) return run(t, after_space, is_l) - start;
    if (is_n(c)) return run(t, after_space, is_n) - start;
    if (is_punct(c)) return run(t, after_space, is_punct) - start;
  }
  return whitespace_tail(t, i);
}

size_t match_llama(const Text& t, size_t i, size_t max_digits) {
  if (size_t m = contraction(t, i, true)) return m;
  size_t n, n2;
  uint32_t c = t.at(i, &n);
  // [^\r\n\p{L}\p{N}]?\p{L}+
  if (!is_crlf(c) && !is_l(c) && !is_n(c)) {
    uint32_t c2 = t.at(i + n, &n2);
    if (n2 && is_l(c2)) return run(t, i + n, is_l) - i;
  }
  if (is_l(c)) return run(t, i, is_l) - i;
  // \p{N}{1,max}
  if (is_n(c)) return run(t, i, is_n, max_digits) - i;
  //  ?[^\s\p{L}\p{N}]+[\r\n]*
  {
    size_t p = i;
    if (c == ' ') {
      uint32_t c2 = t.at(i + 1, &n2);
      if (n2 && is_punct(c2)) p = i + 1;
    }
    uint32_t cp = t.at(p, &n2);
    if (n2 && is_punct(cp)) {
      size_t j = run(t, p, is_punct);
      return run(t, j, is_crlf) - i;
    }
  }
  if (!is_s(c)) return 0;
  // \s*[\r\n]+ : up to and including the last \r or \n of the whitespace run.
  size_t j = run(t, i, is_s);
  size_t last_nl = SIZE_MAX;
  for (size_t k = i; k < j; k += n) {
    if (is_crlf(t.at(k, &n))) last_nl = k;
  }
  if (last_nl != SIZE_MAX) return last_nl + 1 - i;
  return whitespace_tail(t, i);
}

}  // namespace

std::optional<RegexKind> recognise_regex(std::string_view pattern) {
  if (pattern == kGpt2Pattern) return RegexKind::kGpt2;
  if (pattern == kLlama3Pattern) return RegexKind::kLlama3;
  if (pattern == kQwen2Pattern) return RegexKind::kQwen2;
  return std::nullopt;
}

size_t match_regex_at(RegexKind kind, std::string_view s, size_t pos) {
  Text t{s};
  switch (kind) {
    case RegexKind::kGpt2: return match_gpt2(t, pos);
    case RegexKind::kLlama3: return match_llama(t, pos, 3);
    case RegexKind::kQwen2: return match_llama(t, pos, 1);
  }
  return 0;
}

}  // namespace tandem
