// UTF-8 helpers, the Unicode character classes used by the pre-tokenizer regexes, and Unicode
// normalisation (NFC/NFD/NFKC/NFKD). Tables come from unicode_tables.cc (generated).
#pragma once
#include <cstdint>
#include <string>
#include <string_view>

namespace tandem::unicode {

// Decodes the code point starting at s[i]; sets len to its byte length. Invalid or truncated
// sequences decode as U+FFFD with len 1 (callers sanitise input first, so this is a safety net).
uint32_t decode(std::string_view s, size_t i, size_t* len);
void append_utf8(std::string& out, uint32_t cp);
// Byte length of the UTF-8 sequence introduced by lead byte b (1 for invalid lead bytes).
inline size_t sequence_length(unsigned char b) {
  return b < 0x80 ? 1 : (b >> 5) == 6 ? 2 : (b >> 4) == 14 ? 3 : (b >> 3) == 30 ? 4 : 1;
}

bool is_valid_utf8(std::string_view s);
// Like Rust's String::from_utf8_lossy: each maximal invalid subpart becomes one U+FFFD.
std::string to_valid_utf8(std::string_view s);

bool is_letter(uint32_t cp);      // \p{L}
bool is_number(uint32_t cp);      // \p{N}
bool is_mark(uint32_t cp);        // \p{M}
bool is_whitespace(uint32_t cp);  // Unicode White_Space (Oniguruma / Rust \s)
bool is_word(uint32_t cp);        // approximation of Rust regex \w: L, N, M, Pc, ZWJ/ZWNJ

enum class NormForm { NFC, NFD, NFKC, NFKD };
std::string normalize(std::string_view s, NormForm form);

}  // namespace tandem::unicode
