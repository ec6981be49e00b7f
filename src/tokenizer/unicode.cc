#include "tokenizer/unicode.h"

#include <algorithm>
#include <vector>

#include "tokenizer/unicode_tables.h"

namespace tandem::unicode {
namespace ud = unicode_data;

uint32_t decode(std::string_view s, size_t i, size_t* len) {
  const auto* p = reinterpret_cast<const unsigned char*>(s.data()) + i;
  size_t left = s.size() - i;
  unsigned char b = p[0];
  if (b < 0x80) { *len = 1; return b; }
  size_t n = sequence_length(b);
  if (n == 1 || n > left) { *len = 1; return 0xFFFD; }
  uint32_t cp = b & (0x7F >> n);
  for (size_t k = 1; k < n; ++k) {
    if ((p[k] & 0xC0) != 0x80) { *len = 1; return 0xFFFD; }
    cp = (cp << 6) | (p[k] & 0x3F);
  }
  static const uint32_t kMin[5] = {0, 0, 0x80, 0x800, 0x10000};
  if (cp < kMin[n] || cp > 0x10FFFF || (cp >= 0xD800 && cp <= 0xDFFF)) { *len = 1; return 0xFFFD; }
  *len = n;
  return cp;
}

void append_utf8(std::string& out, uint32_t cp) {
  if (cp < 0x80) {
    out.push_back(static_cast<char>(cp));
  } else if (cp < 0x800) {
    out.push_back(static_cast<char>(0xC0 | (cp >> 6)));
    out.push_back(static_cast<char>(0x80 | (cp & 0x3F)));
  } else if (cp < 0x10000) {
    out.push_back(static_cast<char>(0xE0 | (cp >> 12)));
    out.push_back(static_cast<char>(0x80 | ((cp >> 6) & 0x3F)));
    out.push_back(static_cast<char>(0x80 | (cp & 0x3F)));
  } else {
    out.push_back(static_cast<char>(0xF0 | (cp >> 18)));
    out.push_back(static_cast<char>(0x80 | ((cp >> 12) & 0x3F)));
    out.push_back(static_cast<char>(0x80 | ((cp >> 6) & 0x3F)));
    out.push_back(static_cast<char>(0x80 | (cp & 0x3F)));
  }
}

// Length of the valid sequence at s[i], or 0 if invalid; *bad_len gets the length of the maximal
// subpart (the prefix that could still have been the start of a valid sequence), at least 1.
static size_t valid_length(std::string_view s, size_t i, size_t* bad_len) {
  const auto* p = reinterpret_cast<const unsigned char*>(s.data());
  unsigned char b = p[i];
  *bad_len = 1;
  if (b < 0x80) return 1;
  size_t n;
  unsigned char lo = 0x80, hi = 0xBF;  // allowed range of the second byte
  if (b >= 0xC2 && b <= 0xDF) n = 2;
  else if (b >= 0xE0 && b <= 0xEF) { n = 3; if (b == 0xE0) lo = 0xA0; if (b == 0xED) hi = 0x9F; }
  else if (b >= 0xF0 && b <= 0xF4) { n = 4; if (b == 0xF0) lo = 0x90; if (b == 0xF4) hi = 0x8F; }
  else return 0;
  for (size_t k = 1; k < n; ++k) {
    if (i + k >= s.size()) { *bad_len = k; return 0; }
    unsigned char c = p[i + k];
    bool ok = k == 1 ? (c >= lo && c <= hi) : (c >= 0x80 && c <= 0xBF);
    if (!ok) { *bad_len = k; return 0; }
  }
  return n;
}

bool is_valid_utf8(std::string_view s) {
  size_t i = 0, bad;
  while (i < s.size()) {
    if (static_cast<unsigned char>(s[i]) < 0x80) { ++i; continue; }
    size_t n = valid_length(s, i, &bad);
    if (n == 0) return false;
    i += n;
  }
  return true;
}

std::string to_valid_utf8(std::string_view s) {
  std::string out;
  out.reserve(s.size());
  size_t i = 0, bad;
  while (i < s.size()) {
    size_t n = valid_length(s, i, &bad);
    if (n == 0) {
      out += "\xEF\xBF\xBD";
      i += bad;
    } else {
      out.append(s.substr(i, n));
      i += n;
    }
  }
  return out;
}

static bool in_ranges(const ud::Range* r, size_t n, uint32_t cp) {
  const ud::Range* end = r + n;
  const ud::Range* it = std::upper_bound(r, end, cp, [](uint32_t v, const ud::Range& x) { return v < x.first; });
  return it != r && cp <= (it - 1)->last;
}

bool is_letter(uint32_t cp) {
  if (cp < 0x80) return (cp | 0x20) >= 'a' && (cp | 0x20) <= 'z';
  return in_ranges(ud::kLetterRanges, ud::kLetterRangeCount, cp);
}
bool is_number(uint32_t cp) {
  if (cp < 0x80) return cp >= '0' && cp <= '9';
  return in_ranges(ud::kNumberRanges, ud::kNumberRangeCount, cp);
}
bool is_mark(uint32_t cp) { return cp >= 0x300 && in_ranges(ud::kMarkRanges, ud::kMarkRangeCount, cp); }

bool is_whitespace(uint32_t cp) {
  if (cp < 0x80) return (cp >= 0x09 && cp <= 0x0D) || cp == 0x20;
  switch (cp) {
    case 0x85: case 0xA0: case 0x1680: case 0x2028: case 0x2029: case 0x202F: case 0x205F: case 0x3000:
      return true;
    default:
      return cp >= 0x2000 && cp <= 0x200A;
  }
}

bool is_word(uint32_t cp) {
  if (cp < 0x80) return is_letter(cp) || is_number(cp) || cp == '_';
  return is_letter(cp) || is_number(cp) || is_mark(cp) || cp == 0x200C || cp == 0x200D || cp == 0x203F ||
         cp == 0x2040 || cp == 0x2054 || cp == 0xFE33 || cp == 0xFE34 || (cp >= 0xFE4D && cp <= 0xFE4F) ||
         cp == 0xFF3F;
}

// ---- normalisation ----
namespace {
constexpr uint32_t kSBase = 0xAC00, kLBase = 0x1100, kVBase = 0x1161, kTBase = 0x11A7;
constexpr uint32_t kLCount = 19, kVCount = 21, kTCount = 28, kNCount = kVCount * kTCount,
                   kSCount = kLCount * kNCount;

uint8_t ccc(uint32_t cp) {
  if (cp < 0x300) return 0;
  const auto* b = ud::kCombiningClasses;
  const auto* e = b + ud::kCombiningClassCount;
  const auto* it = std::lower_bound(b, e, cp, [](const ud::CombiningClass& x, uint32_t v) { return x.cp < v; });
  return (it != e && it->cp == cp) ? it->ccc : 0;
}

void decompose(uint32_t cp, bool compat, std::vector<uint32_t>& out) {
  if (cp >= kSBase && cp < kSBase + kSCount) {
    uint32_t s = cp - kSBase;
    out.push_back(kLBase + s / kNCount);
    out.push_back(kVBase + (s % kNCount) / kTCount);
    if (s % kTCount) out.push_back(kTBase + s % kTCount);
    return;
  }
  if (cp >= 0xA0) {
    const auto* b = ud::kDecompositions;
    const auto* e = b + ud::kDecompositionCount;
    const auto* it = std::lower_bound(b, e, cp, [](const ud::Decomposition& x, uint32_t v) { return x.cp < v; });
    if (it != e && it->cp == cp && (compat || !it->compat)) {
      for (uint32_t k = 0; k < it->length; ++k) decompose(ud::kDecompositionPool[it->offset + k], compat, out);
      return;
    }
  }
  out.push_back(cp);
}

uint32_t compose_pair(uint32_t a, uint32_t b) {
  if (a >= kLBase && a < kLBase + kLCount && b >= kVBase && b < kVBase + kVCount)
    return kSBase + ((a - kLBase) * kVCount + (b - kVBase)) * kTCount;
  if (a >= kSBase && a < kSBase + kSCount && (a - kSBase) % kTCount == 0 && b > kTBase && b < kTBase + kTCount)
    return a + (b - kTBase);
  const auto* beg = ud::kCompositions;
  const auto* e = beg + ud::kCompositionCount;
  const auto* it = std::lower_bound(beg, e, std::pair{a, b}, [](const ud::Composition& x, std::pair<uint32_t, uint32_t> v) {
    return x.first != v.first ? x.first < v.first : x.second < v.second;
  });
  return (it != e && it->first == a && it->second == b) ? it->composite : 0;
}
}  // namespace

std::string normalize(std::string_view s, NormForm form) {
  // Fast path: text below U+0300 (ASCII, Latin-1, Latin Extended) is invariant under NFC/NFD only
  // when no character decomposes; under NFC that holds for everything below U+0300 (precomposed
  // Latin letters recompose to themselves and there are no combining marks there).
  bool compat = form == NormForm::NFKC || form == NormForm::NFKD;
  bool compose = form == NormForm::NFC || form == NormForm::NFKC;
  bool simple = true;
  for (unsigned char c : s) {
    if (c >= 0x80) {
      simple = false;
      break;
    }
  }
  if (simple) return std::string(s);
  if (form == NormForm::NFC) {
    size_t i = 0, n;
    bool low = true;
    while (i < s.size()) {
      if (decode(s, i, &n) >= 0x300) { low = false; break; }
      i += n;
    }
    if (low) return std::string(s);
  }
  std::vector<uint32_t> cps;
  cps.reserve(s.size());
  for (size_t i = 0, n; i < s.size(); i += n) decompose(decode(s, i, &n), compat, cps);
  // Canonical ordering: stable sort each run of non-starters by combining class.
  for (size_t i = 0; i < cps.size();) {
    if (ccc(cps[i]) == 0) { ++i; continue; }
    size_t j = i;
    while (j < cps.size() && ccc(cps[j]) != 0) ++j;
    std::stable_sort(cps.begin() + i, cps.begin() + j, [](uint32_t a, uint32_t b) { return ccc(a) < ccc(b); });
    i = j;
  }
  if (compose && !cps.empty()) {
    // Canonical composition (UAX #15): a character combines with the last starter unless blocked.
    size_t starter = 0;
    int last_class = ccc(cps[0]) == 0 ? 0 : 256;
    size_t out = 1;
    for (size_t i = 1; i < cps.size(); ++i) {
      uint32_t c = cps[i];
      int cc = ccc(c);
      if (last_class < cc || last_class == 0) {
        uint32_t comp = compose_pair(cps[starter], c);
        if (comp && (last_class < cc || (last_class == 0 && out - 1 == starter))) {
          cps[starter] = comp;
          continue;
        }
      }
      if (cc == 0) starter = out;
      last_class = cc;
      cps[out++] = c;
    }
    cps.resize(out);
  }
  std::string result;
  result.reserve(s.size());
  for (uint32_t c : cps) append_utf8(result, c);
  return result;
}

}  // namespace tandem::unicode
