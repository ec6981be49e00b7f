// Grammar -> pushdown automaton: each rule body becomes a Thompson NFA over {byte ranges, rule
// calls}, is determinized (subset construction; falls back to the epsilon-free NFA if that blows
// up), minimized, and trimmed of states that cannot reach the end of the rule. Then the
// grammar-level checks (left recursion, emptiness) and the FOLLOW sets.
#include "grammar/pda.h"

#include <fmt/format.h>

#include <algorithm>
#include <functional>
#include <map>
#include <set>

#include "util/error.h"

namespace tandem::grammar::detail {
namespace {

constexpr size_t kMaxNfaNodes = 2'000'000;
constexpr size_t kMaxDfaStates = 20'000;

using Seq = std::vector<std::pair<uint8_t, uint8_t>>;

// UTF-8 encodings of [lo, hi] as sequences of byte ranges.
void utf8_sequences(uint32_t lo, uint32_t hi, std::vector<Seq>& out) {
  if (lo > hi) return;
  for (uint32_t m : {0x7Fu, 0x7FFu, 0xFFFFu}) {
    if (lo <= m && m < hi) {
      utf8_sequences(lo, m, out);
      utf8_sequences(m + 1, hi, out);
      return;
    }
  }
  if (hi < 0x80) {
    out.push_back({{static_cast<uint8_t>(lo), static_cast<uint8_t>(hi)}});
    return;
  }
  const int n = hi < 0x800 ? 2 : hi < 0x10000 ? 3 : 4;
  for (int i = 1; i < n; ++i) {
    uint32_t m = (1u << (6 * i)) - 1;
    if ((lo & ~m) != (hi & ~m)) {
      if ((lo & m) != 0) {
        utf8_sequences(lo, lo | m, out);
        utf8_sequences((lo | m) + 1, hi, out);
        return;
      }
      if ((hi & m) != m) {
        utf8_sequences(lo, (hi & ~m) - 1, out);
        utf8_sequences(hi & ~m, hi, out);
        return;
      }
    }
  }
  auto encode = [n](uint32_t c, uint8_t* b) {
    if (n == 2) b[0] = 0xC0 | (c >> 6), b[1] = 0x80 | (c & 0x3F);
    if (n == 3) b[0] = 0xE0 | (c >> 12), b[1] = 0x80 | ((c >> 6) & 0x3F), b[2] = 0x80 | (c & 0x3F);
    if (n == 4)
      b[0] = 0xF0 | (c >> 18), b[1] = 0x80 | ((c >> 12) & 0x3F), b[2] = 0x80 | ((c >> 6) & 0x3F), b[3] = 0x80 | (c & 0x3F);
  };
  uint8_t a[4], b[4];
  encode(lo, a);
  encode(hi, b);
  Seq s;
  for (int k = 0; k < n; ++k) s.push_back({a[k], b[k]});
  out.push_back(std::move(s));
}

// One rule's automaton (rule-local node ids).
struct Fsm {
  struct BE {
    uint8_t lo, hi;
    int32_t to;
  };
  struct CE {
    int32_t rule, to;
  };
  std::vector<std::vector<BE>> bytes;
  std::vector<std::vector<CE>> calls;
  std::vector<char> final;
  int32_t start = 0;
  int32_t add() {
    bytes.emplace_back();
    calls.emplace_back();
    final.push_back(0);
    return static_cast<int32_t>(final.size()) - 1;
  }
  size_t size() const { return final.size(); }
};

struct Nfa {
  struct Edge {
    uint8_t kind;  // 0 epsilon, 1 byte range, 2 call
    uint8_t lo, hi;
    int32_t rule, to;
  };
  std::vector<std::vector<Edge>> out;
  int32_t add() {
    if (out.size() >= kMaxNfaNodes) fail("grammar: too large to compile (over {} automaton states)", kMaxNfaNodes);
    out.emplace_back();
    return static_cast<int32_t>(out.size()) - 1;
  }
  void eps(int32_t a, int32_t b) { out[a].push_back({0, 0, 0, -1, b}); }
};

class NfaBuilder {
 public:
  NfaBuilder(const Grammar& g, Nfa& n) : g_(g), n_(n) {}

  // Builds `expr` starting at `from`; returns the end node.
  int32_t build(int32_t expr, int32_t from) {
    const Grammar::Expr& e = g_.expr(expr);
    switch (e.kind) {
      case Grammar::Kind::kEmpty: return from;
      case Grammar::Kind::kBytes: {
        int32_t cur = from;
        for (unsigned char c : e.bytes) {
          int32_t nx = n_.add();
          n_.out[cur].push_back({1, c, c, -1, nx});
          cur = nx;
        }
        return cur;
      }
      case Grammar::Kind::kCharClass: {
        std::vector<Seq> seqs;
        for (auto [lo, hi] : e.ranges) utf8_sequences(lo, hi, seqs);
        int32_t end = n_.add();
        for (const auto& s : seqs) {
          int32_t cur = from;
          for (size_t k = 0; k < s.size(); ++k) {
            int32_t nx = k + 1 == s.size() ? end : n_.add();
            n_.out[cur].push_back({1, s[k].first, s[k].second, -1, nx});
            cur = nx;
          }
        }
        return end;
      }
      case Grammar::Kind::kSequence: {
        int32_t cur = from;
        for (int32_t c : e.children) cur = build(c, cur);
        return cur;
      }
      case Grammar::Kind::kChoice: {
        int32_t end = n_.add();
        for (int32_t c : e.children) {
          int32_t s = n_.add();
          n_.eps(from, s);
          n_.eps(build(c, s), end);
        }
        return end;
      }
      case Grammar::Kind::kRuleRef: {
        if (g_.rule_body(e.rule) < 0) fail("grammar: rule '{}' is used but never defined", g_.rule_name(e.rule));
        int32_t nx = n_.add();
        n_.out[from].push_back({2, 0, 0, e.rule, nx});
        return nx;
      }
      case Grammar::Kind::kRepeat: {
        int32_t cur = from;
        for (int32_t i = 0; i < e.min; ++i) cur = build(e.children[0], cur);
        if (e.max == Grammar::kUnbounded) {
          int32_t loop = n_.add();
          n_.eps(cur, loop);
          int32_t body = n_.add();
          n_.eps(loop, body);
          n_.eps(build(e.children[0], body), loop);
          return loop;
        }
        int32_t end = n_.add();
        for (int32_t i = e.min; i < e.max; ++i) {
          n_.eps(cur, end);
          int32_t s = n_.add();
          n_.eps(cur, s);
          cur = build(e.children[0], s);
        }
        n_.eps(cur, end);
        return end;
      }
    }
    return from;
  }

 private:
  const Grammar& g_;
  Nfa& n_;
};

using NodeSet = std::vector<int32_t>;

void eps_closure(const Nfa& n, NodeSet& set, std::vector<char>& mark) {
  std::vector<int32_t> stack(set.begin(), set.end());
  for (int32_t x : set) mark[x] = 1;
  while (!stack.empty()) {
    int32_t x = stack.back();
    stack.pop_back();
    for (const auto& e : n.out[x]) {
      if (e.kind == 0 && !mark[e.to]) {
        mark[e.to] = 1;
        set.push_back(e.to);
        stack.push_back(e.to);
      }
    }
  }
  for (int32_t x : set) mark[x] = 0;
  std::sort(set.begin(), set.end());
}

// Subset construction. Returns false if it exceeds kMaxDfaStates.
bool determinize(const Nfa& n, int32_t start, int32_t final, Fsm& out) {
  std::vector<char> mark(n.out.size(), 0);
  std::map<NodeSet, int32_t> ids;
  std::vector<NodeSet> sets;
  auto intern = [&](NodeSet s) -> int32_t {
    eps_closure(n, s, mark);
    auto it = ids.find(s);
    if (it != ids.end()) return it->second;
    int32_t id = out.add();
    ids.emplace(s, id);
    sets.push_back(std::move(s));
    return id;
  };
  out = Fsm();
  out.start = intern({start});
  for (size_t k = 0; k < sets.size(); ++k) {
    if (sets.size() > kMaxDfaStates) return false;
    const NodeSet s = sets[k];
    std::vector<uint32_t> points;
    std::map<int32_t, NodeSet> calls;
    for (int32_t x : s) {
      if (x == final) out.final[k] = 1;
      for (const auto& e : n.out[x]) {
        if (e.kind == 1) points.push_back(e.lo), points.push_back(e.hi + 1u);
        else if (e.kind == 2) calls[e.rule].push_back(e.to);
      }
    }
    std::sort(points.begin(), points.end());
    points.erase(std::unique(points.begin(), points.end()), points.end());
    for (size_t p = 0; p + 1 < points.size(); ++p) {
      uint32_t lo = points[p], hi = points[p + 1] - 1;
      NodeSet t;
      for (int32_t x : s)
        for (const auto& e : n.out[x])
          if (e.kind == 1 && e.lo <= lo && hi <= e.hi) t.push_back(e.to);
      if (t.empty()) continue;
      std::sort(t.begin(), t.end());
      t.erase(std::unique(t.begin(), t.end()), t.end());
      int32_t to = intern(std::move(t));
      auto& be = out.bytes[k];
      if (!be.empty() && be.back().to == to && be.back().hi + 1u == lo) be.back().hi = static_cast<uint8_t>(hi);
      else be.push_back({static_cast<uint8_t>(lo), static_cast<uint8_t>(hi), to});
    }
    for (auto& [rule, targets] : calls) {
      std::sort(targets.begin(), targets.end());
      targets.erase(std::unique(targets.begin(), targets.end()), targets.end());
      int32_t to = intern(targets);
      out.calls[k].push_back({rule, to});
    }
  }
  return true;
}

// The epsilon-free NFA (when subset construction blows up): nodes that are the start or the
// target of a non-epsilon edge, each with the edges of its closure.
void epsilon_free(const Nfa& n, int32_t start, int32_t final, Fsm& out) {
  std::vector<char> mark(n.out.size(), 0);
  std::vector<int32_t> id(n.out.size(), -1);
  std::vector<int32_t> order;
  auto get = [&](int32_t x) {
    if (id[x] < 0) {
      id[x] = static_cast<int32_t>(order.size());
      order.push_back(x);
    }
    return id[x];
  };
  out = Fsm();
  get(start);
  for (size_t k = 0; k < order.size(); ++k) {
    NodeSet s{order[k]};
    eps_closure(n, s, mark);
    while (out.size() <= k) out.add();
    for (int32_t x : s) {
      if (x == final) out.final[k] = 1;
      for (const auto& e : n.out[x]) {
        if (e.kind == 1) out.bytes[k].push_back({e.lo, e.hi, get(e.to)});
        else if (e.kind == 2) out.calls[k].push_back({e.rule, get(e.to)});
      }
    }
  }
  while (out.size() < order.size()) out.add();
  out.start = 0;
}

// Moore partition refinement.
void minimize(Fsm& f) {
  const size_t n = f.size();
  std::vector<int32_t> cls(n);
  for (size_t i = 0; i < n; ++i) cls[i] = f.final[i];
  size_t count = 0;
  while (true) {
    std::map<std::vector<int64_t>, int32_t> sig_ids;
    std::vector<int32_t> next(n);
    for (size_t i = 0; i < n; ++i) {
      std::vector<int64_t> sig{cls[i]};
      int64_t last_to = -1, last_hi = -2;
      for (const auto& e : f.bytes[i]) {
        int64_t to = cls[e.to];
        if (to == last_to && e.lo == last_hi + 1) {
          sig.back() = e.hi;
        } else {
          sig.push_back(-1), sig.push_back(to), sig.push_back(e.lo), sig.push_back(e.hi);
        }
        last_to = to, last_hi = e.hi;
      }
      std::vector<std::pair<int32_t, int32_t>> cs;
      for (const auto& c : f.calls[i]) cs.push_back({c.rule, cls[c.to]});
      std::sort(cs.begin(), cs.end());
      for (auto [r, t] : cs) sig.push_back(-2), sig.push_back(r), sig.push_back(t);
      next[i] = sig_ids.emplace(std::move(sig), static_cast<int32_t>(sig_ids.size())).first->second;
    }
    cls.swap(next);
    if (sig_ids.size() == count) break;
    count = sig_ids.size();
  }
  if (count == n) return;
  Fsm m;
  for (size_t i = 0; i < count; ++i) m.add();
  std::vector<char> done(count, 0);
  for (size_t i = 0; i < n; ++i) {
    int32_t c = cls[i];
    if (done[c]) continue;
    done[c] = 1;
    m.final[c] = f.final[i];
    for (const auto& e : f.bytes[i]) {
      auto& be = m.bytes[c];
      int32_t to = cls[e.to];
      if (!be.empty() && be.back().to == to && be.back().hi + 1 == e.lo) be.back().hi = e.hi;
      else be.push_back({e.lo, e.hi, to});
    }
    for (const auto& e : f.calls[i]) m.calls[c].push_back({e.rule, cls[e.to]});
  }
  m.start = cls[f.start];
  f = std::move(m);
}

}  // namespace

Pda build_pda(const Grammar& g) {
  const int32_t R = g.num_rules();
  if (g.root() < 0 || g.root() >= R) fail("grammar: no start rule");
  if (g.rule_body(g.root()) < 0) fail("grammar: the start rule '{}' has no definition", g.rule_name(g.root()));

  // Only rules reachable from the root are compiled.
  std::vector<char> used(R, 0);
  std::vector<int32_t> todo{g.root()};
  used[g.root()] = 1;
  std::vector<Fsm> fsms(R);
  while (!todo.empty()) {
    int32_t r = todo.back();
    todo.pop_back();
    if (g.rule_body(r) < 0) fail("grammar: rule '{}' is used but never defined", g.rule_name(r));
    Nfa nfa;
    int32_t start = nfa.add();
    int32_t end = NfaBuilder(g, nfa).build(g.rule_body(r), start);
    Fsm& f = fsms[r];
    if (determinize(nfa, start, end, f)) minimize(f);
    else epsilon_free(nfa, start, end, f);
    for (const auto& cs : f.calls)
      for (const auto& c : cs)
        if (!used[c.rule]) used[c.rule] = 1, todo.push_back(c.rule);
  }

  // Productive rules (non-empty language), then drop calls to the others and trim every rule to
  // the nodes on some start -> final path.
  std::vector<char> productive(R, 0);
  for (bool changed = true; changed;) {
    changed = false;
    for (int32_t r = 0; r < R; ++r) {
      if (!used[r] || productive[r]) continue;
      const Fsm& f = fsms[r];
      std::vector<char> seen(f.size(), 0);
      std::vector<int32_t> st{f.start};
      seen[f.start] = 1;
      bool ok = false;
      while (!st.empty() && !ok) {
        int32_t x = st.back();
        st.pop_back();
        if (f.final[x]) ok = true;
        for (const auto& e : f.bytes[x])
          if (!seen[e.to]) seen[e.to] = 1, st.push_back(e.to);
        for (const auto& e : f.calls[x])
          if (productive[e.rule] && !seen[e.to]) seen[e.to] = 1, st.push_back(e.to);
      }
      if (ok) productive[r] = 1, changed = true;
    }
  }
  if (!productive[g.root()]) fail("grammar: the grammar matches no string (rule '{}')", g.rule_name(g.root()));

  Pda pda;
  pda.root = g.root();
  pda.rule_start.assign(R, -1);
  for (int32_t r = 0; r < R; ++r) pda.rule_names.push_back(g.rule_name(r));
  std::vector<std::vector<int32_t>> global(R);
  for (int32_t r = 0; r < R; ++r) {
    if (!used[r] || !productive[r]) continue;
    Fsm& f = fsms[r];
    for (auto& cs : f.calls) std::erase_if(cs, [&](const Fsm::CE& c) { return !productive[c.rule]; });
    const size_t n = f.size();
    std::vector<char> fwd(n, 0), bwd(n, 0);
    std::vector<std::vector<int32_t>> rev(n);
    std::vector<int32_t> st{f.start};
    fwd[f.start] = 1;
    while (!st.empty()) {
      int32_t x = st.back();
      st.pop_back();
      auto visit = [&](int32_t to) {
        rev[to].push_back(x);
        if (!fwd[to]) fwd[to] = 1, st.push_back(to);
      };
      for (const auto& e : f.bytes[x]) visit(e.to);
      for (const auto& e : f.calls[x]) visit(e.to);
    }
    for (size_t x = 0; x < n; ++x)
      if (f.final[x] && fwd[x]) bwd[x] = 1, st.push_back(static_cast<int32_t>(x));
    while (!st.empty()) {
      int32_t x = st.back();
      st.pop_back();
      for (int32_t p : rev[x])
        if (!bwd[p]) bwd[p] = 1, st.push_back(p);
    }
    global[r].assign(n, -1);
    for (size_t x = 0; x < n; ++x) {
      if (fwd[x] && bwd[x]) {
        global[r][x] = static_cast<int32_t>(pda.nodes.size());
        pda.nodes.push_back({r, 0, 0, 0, 0, f.final[x] != 0});
      }
    }
    pda.rule_start[r] = global[r][f.start];
  }
  for (int32_t r = 0; r < R; ++r) {
    if (global[r].empty()) continue;
    const Fsm& f = fsms[r];
    for (size_t x = 0; x < f.size(); ++x) {
      int32_t id = global[r][x];
      if (id < 0) continue;
      auto& node = pda.nodes[id];
      node.byte_begin = static_cast<uint32_t>(pda.bytes.size());
      for (const auto& e : f.bytes[x])
        if (global[r][e.to] >= 0) pda.bytes.push_back({e.lo, e.hi, global[r][e.to]});
      node.byte_end = static_cast<uint32_t>(pda.bytes.size());
      node.call_begin = static_cast<uint32_t>(pda.calls.size());
      for (const auto& e : f.calls[x])
        if (global[r][e.to] >= 0) pda.calls.push_back({e.rule, global[r][e.to], false});
      node.call_end = static_cast<uint32_t>(pda.calls.size());
    }
  }
  for (auto& c : pda.calls) {
    const auto& t = pda.nodes[c.target];
    c.tail = t.final && t.byte_begin == t.byte_end && t.call_begin == t.call_end;
  }

  // Nullable rules.
  const size_t N = pda.nodes.size();
  std::vector<char> nullable(R, 0);
  // Nodes reachable from `from` through calls of nullable rules (without consuming a byte).
  std::vector<uint32_t> seen(N, 0);
  uint32_t stamp = 0;
  auto null_reach = [&](int32_t from, std::vector<int32_t>& out) {
    out.clear();
    ++stamp;
    out.push_back(from);
    seen[from] = stamp;
    for (size_t k = 0; k < out.size(); ++k) {
      const auto& nd = pda.nodes[out[k]];
      for (uint32_t c = nd.call_begin; c < nd.call_end; ++c) {
        const auto& ce = pda.calls[c];
        if (nullable[ce.rule] && seen[ce.target] != stamp) seen[ce.target] = stamp, out.push_back(ce.target);
      }
    }
  };
  std::vector<int32_t> reach;
  for (bool changed = true; changed;) {
    changed = false;
    for (int32_t r = 0; r < R; ++r) {
      if (pda.rule_start[r] < 0 || nullable[r]) continue;
      null_reach(pda.rule_start[r], reach);
      for (int32_t x : reach)
        if (pda.nodes[x].final) {
          nullable[r] = 1, changed = true;
          break;
        }
    }
  }

  // Left recursion: r calls s before consuming a byte.
  std::vector<std::vector<int32_t>> left(R);
  for (int32_t r = 0; r < R; ++r) {
    if (pda.rule_start[r] < 0) continue;
    null_reach(pda.rule_start[r], reach);
    for (int32_t x : reach) {
      const auto& nd = pda.nodes[x];
      for (uint32_t c = nd.call_begin; c < nd.call_end; ++c) left[r].push_back(pda.calls[c].rule);
    }
  }
  std::vector<int> color(R, 0);
  std::function<void(int32_t)> dfs = [&](int32_t r) {
    color[r] = 1;
    for (int32_t s : left[r]) {
      if (color[s] == 1) fail("grammar: rule '{}' is left-recursive (not supported; rewrite it with repetition)", g.rule_name(s));
      if (color[s] == 0) dfs(s);
    }
    color[r] = 2;
  };
  for (int32_t r = 0; r < R; ++r)
    if (pda.rule_start[r] >= 0 && color[r] == 0) dfs(r);

  // FIRST sets per rule, then FOLLOW.
  std::vector<std::bitset<257>> first(R);
  auto first_at = [&](int32_t node, std::bitset<257>& out) -> bool {
    null_reach(node, reach);
    bool can_end = false;
    for (int32_t x : reach) {
      const auto& nd = pda.nodes[x];
      can_end |= nd.final;
      for (uint32_t e = nd.byte_begin; e < nd.byte_end; ++e)
        for (int b = pda.bytes[e].lo; b <= pda.bytes[e].hi; ++b) out.set(b);
      for (uint32_t c = nd.call_begin; c < nd.call_end; ++c) out |= first[pda.calls[c].rule];
    }
    return can_end;
  };
  for (bool changed = true; changed;) {
    changed = false;
    for (int32_t r = 0; r < R; ++r) {
      if (pda.rule_start[r] < 0) continue;
      std::bitset<257> f = first[r];
      first_at(pda.rule_start[r], f);
      if (f != first[r]) first[r] = f, changed = true;
    }
  }
  pda.follow.assign(R, {});
  pda.follow[pda.root].set(256);
  for (bool changed = true; changed;) {
    changed = false;
    for (size_t x = 0; x < N; ++x) {
      const auto& nd = pda.nodes[x];
      for (uint32_t c = nd.call_begin; c < nd.call_end; ++c) {
        const auto& ce = pda.calls[c];
        std::bitset<257> f = pda.follow[ce.rule];
        if (first_at(ce.target, f)) f |= pda.follow[nd.rule];
        if (f != pda.follow[ce.rule]) pda.follow[ce.rule] = f, changed = true;
      }
    }
  }
  return pda;
}

}  // namespace tandem::grammar::detail
