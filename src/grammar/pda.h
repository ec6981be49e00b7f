// The compiled form of a Grammar (internal): every rule is a finite automaton over bytes whose
// edges either consume a byte range or call another rule; together they form a pushdown
// automaton whose stack holds return nodes.
#pragma once
#include <bitset>
#include <cstdint>
#include <string>
#include <vector>

#include "grammar/grammar.h"

namespace tandem::grammar::detail {

struct Pda {
  struct ByteEdge {
    uint8_t lo, hi;
    int32_t target;
  };
  struct CallEdge {
    int32_t rule;
    int32_t target;  // the node to return to
    bool tail;       // target is final with no edges: the callee returns straight to our caller
  };
  struct Node {
    int32_t rule;
    uint32_t byte_begin, byte_end;  // into bytes
    uint32_t call_begin, call_end;  // into calls
    bool final;
  };
  std::vector<Node> nodes;
  std::vector<ByteEdge> bytes;
  std::vector<CallEdge> calls;
  std::vector<int32_t> rule_start;
  std::vector<std::string> rule_names;
  int32_t root = -1;
  // FOLLOW sets per rule: bytes that may come right after the rule in some context; bit 256 is
  // the end of the output. Used to discard context-dependent tokens early.
  std::vector<std::bitset<257>> follow;
};

// Throws tandem::Error for undefined or left-recursive rules, a grammar that matches nothing,
// or one too large to compile.
Pda build_pda(const Grammar& g);

}  // namespace tandem::grammar::detail
