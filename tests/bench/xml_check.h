// A tiny XML 1.0 well-formedness checker for the tests (no dependency): one root element, properly
// nested and closed tags, quoted unique attributes, valid entity / character references, comments,
// processing instructions, CDATA. Not validating (no DTDs). Returns "" when well-formed, else why.
#pragma once
#include <cctype>
#include <set>
#include <string>
#include <vector>

namespace tandem::bench::testing {

inline std::string xml_wellformed(const std::string& s) {
  size_t i = 0;
  std::vector<std::string> stack;
  int roots = 0;
  auto name_start = [](char c) { return std::isalpha(static_cast<unsigned char>(c)) || c == '_' || c == ':' || (c & 0x80); };
  auto name_char = [&](char c) {
    return name_start(c) || std::isdigit(static_cast<unsigned char>(c)) || c == '-' || c == '.';
  };
  auto read_name = [&]() -> std::string {
    const size_t s0 = i;
    if (i >= s.size() || !name_start(s[i])) return "";
    while (i < s.size() && name_char(s[i])) ++i;
    return s.substr(s0, i - s0);
  };
  auto skip_ws = [&] {
    while (i < s.size() && std::isspace(static_cast<unsigned char>(s[i]))) ++i;
  };
  auto check_ref = [&](size_t& j) -> bool {  // s[j] == '&'
    const size_t semi = s.find(';', j);
    if (semi == std::string::npos || semi - j > 12) return false;
    const std::string ref = s.substr(j + 1, semi - j - 1);
    static const std::set<std::string> named = {"amp", "lt", "gt", "quot", "apos"};
    bool ok = named.count(ref) > 0;
    if (!ok && ref.size() > 1 && ref[0] == '#') {
      ok = true;
      const bool hex = ref[1] == 'x';
      if (ref.size() == (hex ? 2u : 1u)) ok = false;
      for (size_t k = hex ? 2 : 1; k < ref.size(); ++k)
        if (!(hex ? std::isxdigit(static_cast<unsigned char>(ref[k])) : std::isdigit(static_cast<unsigned char>(ref[k]))))
          ok = false;
    }
    j = semi;
    return ok;
  };
  if (s.compare(0, 5, "<?xml") == 0) {
    const size_t end = s.find("?>");
    if (end == std::string::npos) return "unterminated XML declaration";
    i = end + 2;
  }
  while (i < s.size()) {
    if (s[i] != '<') {
      if (stack.empty() && !std::isspace(static_cast<unsigned char>(s[i]))) return "text outside the root element";
      if (s[i] == '&' && !check_ref(i)) return "bad entity reference at " + std::to_string(i);
      ++i;
      continue;
    }
    if (s.compare(i, 4, "<!--") == 0) {
      const size_t end = s.find("-->", i + 4);
      if (end == std::string::npos) return "unterminated comment";
      i = end + 3;
    } else if (s.compare(i, 9, "<![CDATA[") == 0) {
      if (stack.empty()) return "CDATA outside the root";
      const size_t end = s.find("]]>", i);
      if (end == std::string::npos) return "unterminated CDATA";
      i = end + 3;
    } else if (s.compare(i, 2, "<?") == 0) {
      const size_t end = s.find("?>", i);
      if (end == std::string::npos) return "unterminated processing instruction";
      i = end + 2;
    } else if (s.compare(i, 2, "<!") == 0) {
      return "DOCTYPE / declarations are not expected";
    } else if (s.compare(i, 2, "</") == 0) {
      i += 2;
      const std::string name = read_name();
      skip_ws();
      if (i >= s.size() || s[i] != '>') return "bad end tag </" + name;
      ++i;
      if (stack.empty() || stack.back() != name) return "mismatched end tag </" + name + ">";
      stack.pop_back();
    } else {
      ++i;
      const std::string name = read_name();
      if (name.empty()) return "bad start tag at " + std::to_string(i);
      if (stack.empty() && ++roots > 1) return "more than one root element";
      std::set<std::string> attrs;
      for (;;) {
        const size_t before = i;
        skip_ws();
        if (i >= s.size()) return "unterminated tag <" + name;
        if (s[i] == '>') {
          ++i;
          stack.push_back(name);
          break;
        }
        if (s.compare(i, 2, "/>") == 0) {
          i += 2;
          break;
        }
        if (i == before) return "no space before an attribute in <" + name;
        const std::string attr = read_name();
        if (attr.empty()) return "bad attribute in <" + name;
        if (!attrs.insert(attr).second) return "duplicate attribute " + attr + " in <" + name;
        skip_ws();
        if (i >= s.size() || s[i] != '=') return "attribute " + attr + " without value";
        ++i;
        skip_ws();
        if (i >= s.size() || (s[i] != '"' && s[i] != '\'')) return "unquoted attribute " + attr;
        const char q = s[i++];
        while (i < s.size() && s[i] != q) {
          if (s[i] == '<') return "'<' in attribute " + attr;
          if (s[i] == '&' && !check_ref(i)) return "bad entity in attribute " + attr;
          ++i;
        }
        if (i >= s.size()) return "unterminated attribute " + attr;
        ++i;
      }
    }
  }
  if (!stack.empty()) return "unclosed element <" + stack.back() + ">";
  if (roots == 0) return "no root element";
  return "";
}

}  // namespace tandem::bench::testing
