// Token masks over a pushdown automaton.
//
// Runtime state: a set of stacks, hash-consed into a pool of frames (node, parent) so equal
// stacks share one id; the state keeps only the "leaf" stacks, whose top node has byte edges,
// plus whether the root rule can end here. Advancing by a byte moves every leaf along its
// matching byte edges and takes the closure (enter called rules, return from finished ones).
//
// Masks (the adaptive token-mask cache of xgrammar): for every node p with byte edges, compile
// walks the vocabulary trie from the single stack [p] over a sentinel bottom, i.e. knowing only
// p's own rule. Each token is then accepted (its bytes end inside the walk), rejected (the walk
// dies without reaching p's rule end), or uncertain (p's rule ends inside the token and the rest
// depends on the callers; tokens whose next byte is outside FOLLOW(rule) are rejected right
// away). At run time the mask is the union over leaves of the cached accepted sets plus the
// uncertain tokens that pass a check against the leaf's real stack, walked in trie order with
// shared prefixes reused and dead prefixes skipped.
#include "grammar/matcher.h"

#include <algorithm>
#include <atomic>
#include <exception>
#include <mutex>
#include <thread>
#include <chrono>
#include <cmath>
#include <cstring>
#include <limits>

#include "grammar/pda.h"
#include "tokenizer/tokenizer.h"
#include "util/error.h"

namespace tandem::grammar {

using detail::Pda;

// ---------------------------------------------------------------------------------------------
// Vocabulary

struct Vocabulary::Impl {
  std::vector<std::string> tokens;
  std::vector<int32_t> stop_ids;
  std::vector<char> usable;  // in the trie: non-empty, not special, not a stop id
  std::vector<char> stop;
  struct TrieNode {
    int32_t end;        // preorder index past the subtree
    int32_t depth;      // bytes from the root
    int32_t sub_begin;  // sorted[sub_begin, sub_end): tokens in the subtree; the first `own` end here
    int32_t sub_end;
    int32_t own;
    uint8_t byte;
  };
  std::vector<TrieNode> trie;  // preorder, [0] = root
  std::vector<int32_t> sorted;  // usable ids in byte order
  int32_t max_depth = 0;
};

Vocabulary::Vocabulary(std::vector<std::string> token_bytes, std::vector<int32_t> stop_ids,
                       std::vector<int32_t> special_ids) {
  auto impl = std::make_shared<Impl>();
  const int32_t V = static_cast<int32_t>(token_bytes.size());
  impl->tokens = std::move(token_bytes);
  impl->usable.assign(V, 0);
  impl->stop.assign(V, 0);
  for (int32_t id = 0; id < V; ++id) impl->usable[id] = !impl->tokens[id].empty();
  for (int32_t id : special_ids)
    if (id >= 0 && id < V) impl->usable[id] = 0;
  for (int32_t id : stop_ids) {
    if (id < 0 || id >= V) fail("grammar: stop token id {} is outside the vocabulary of {}", id, V);
    if (!impl->stop[id]) impl->stop_ids.push_back(id);
    impl->stop[id] = 1;
    impl->usable[id] = 0;
  }
  for (int32_t id = 0; id < V; ++id)
    if (impl->usable[id]) impl->sorted.push_back(id);
  const auto& tok = impl->tokens;
  std::sort(impl->sorted.begin(), impl->sorted.end(), [&](int32_t a, int32_t b) {
    return tok[a] != tok[b] ? tok[a] < tok[b] : a < b;
  });
  const int32_t n = static_cast<int32_t>(impl->sorted.size());
  auto& trie = impl->trie;
  trie.push_back({0, 0, 0, n, 0, 0});
  std::vector<int32_t> path{0};
  const std::string* prev = nullptr;
  for (int32_t k = 0; k < n; ++k) {
    const std::string& t = tok[impl->sorted[k]];
    size_t l = 0;
    if (prev)
      while (l < prev->size() && l < t.size() && (*prev)[l] == t[l]) ++l;
    while (path.size() - 1 > l) {
      trie[path.back()].end = static_cast<int32_t>(trie.size());
      trie[path.back()].sub_end = k;
      path.pop_back();
    }
    for (size_t d = l; d < t.size(); ++d) {
      path.push_back(static_cast<int32_t>(trie.size()));
      trie.push_back({0, static_cast<int32_t>(d + 1), k, n, 0, static_cast<uint8_t>(t[d])});
    }
    trie[path.back()].own++;
    impl->max_depth = std::max(impl->max_depth, static_cast<int32_t>(t.size()));
    prev = &t;
  }
  while (!path.empty()) {
    trie[path.back()].end = static_cast<int32_t>(trie.size());
    trie[path.back()].sub_end = n;
    path.pop_back();
  }
  impl_ = std::move(impl);
}

std::shared_ptr<const Vocabulary> Vocabulary::from_tokenizer(const Tokenizer& tokenizer, int32_t vocab_size,
                                                             std::vector<int32_t> stop_ids) {
  const int32_t n = tokenizer.vocab_size();
  if (vocab_size < 0) vocab_size = n;
  if (vocab_size < n) fail("grammar: vocab_size {} is smaller than the tokenizer's {}", vocab_size, n);
  std::vector<std::string> bytes(vocab_size);
  std::vector<int32_t> special;
  for (int32_t id = 0; id < n; ++id) {
    if (tokenizer.is_special(id)) special.push_back(id);
    else bytes[id] = tokenizer.token_bytes(id);
  }
  if (stop_ids.empty()) stop_ids = tokenizer.eos_ids();
  return std::make_shared<Vocabulary>(std::move(bytes), std::move(stop_ids), std::move(special));
}

int32_t Vocabulary::size() const { return static_cast<int32_t>(impl_->tokens.size()); }
const std::vector<int32_t>& Vocabulary::stop_ids() const { return impl_->stop_ids; }
const std::string& Vocabulary::token(int32_t id) const { return impl_->tokens.at(id); }

// ---------------------------------------------------------------------------------------------
// Stacks

namespace {

constexpr int32_t kRoot = -1;      // below the root rule's frame
constexpr int32_t kSentinel = -2;  // below the frame a cache walk starts from

struct Frame {
  int32_t node, parent;
};

// Hash-consed stack frames. Ids are dense and only grow, except truncate(n), which removes the
// newest frames (in reverse order, which keeps linear probing intact).
class StackPool {
 public:
  StackPool() { table_.assign(1024, -1); }
  int32_t intern(int32_t node, int32_t parent) {
    const uint64_t key = (static_cast<uint64_t>(static_cast<uint32_t>(node)) << 32) | static_cast<uint32_t>(parent);
    size_t mask = table_.size() - 1;
    size_t h = hash(key) & mask;
    while (true) {
      int32_t id = table_[h];
      if (id < 0) break;
      if (frames_[id].node == node && frames_[id].parent == parent) return id;
      h = (h + 1) & mask;
    }
    int32_t id = static_cast<int32_t>(frames_.size());
    frames_.push_back({node, parent});
    table_[h] = id;
    if (frames_.size() * 2 > table_.size()) rehash(table_.size() * 2);
    return id;
  }
  Frame operator[](int32_t id) const { return frames_[id]; }
  size_t size() const { return frames_.size(); }
  void truncate(size_t n) {
    size_t mask = table_.size() - 1;
    for (size_t id = frames_.size(); id-- > n;) {
      const Frame f = frames_[id];
      size_t h = hash(key_of(f)) & mask;
      while (table_[h] != static_cast<int32_t>(id)) h = (h + 1) & mask;
      table_[h] = -1;
    }
    frames_.resize(std::min(n, frames_.size()));
  }
  void clear() {
    if (table_.size() > 4096) table_.assign(4096, -1);
    else std::fill(table_.begin(), table_.end(), -1);
    frames_.clear();
  }

 private:
  static uint64_t key_of(const Frame& f) {
    return (static_cast<uint64_t>(static_cast<uint32_t>(f.node)) << 32) | static_cast<uint32_t>(f.parent);
  }
  static size_t hash(uint64_t k) { return static_cast<size_t>((k * 0x9E3779B97F4A7C15ull) >> 20); }
  void rehash(size_t cap) {
    table_.assign(cap, -1);
    size_t mask = cap - 1;
    for (size_t id = 0; id < frames_.size(); ++id) {
      size_t h = hash(key_of(frames_[id])) & mask;
      while (table_[h] >= 0) h = (h + 1) & mask;
      table_[h] = static_cast<int32_t>(id);
    }
  }
  std::vector<Frame> frames_;
  std::vector<int32_t> table_;
};

struct StepFlags {
  bool root_end = false;  // the root rule finished
  bool sentinel = false;  // the walk's starting rule finished (cache walks only)
};

class Stepper {
 public:
  explicit Stepper(const Pda& pda) : pda_(&pda) {}

  // The leaves of the closure of stack s.
  void start(StackPool& pool, int32_t s, std::vector<int32_t>& out, StepFlags& f) {
    ++gen_;
    out.clear();
    f = {};
    closure(pool, s, out, f);
  }
  // Every leaf moved by byte b, then closed.
  void advance(StackPool& pool, const std::vector<int32_t>& leaves, uint8_t b, std::vector<int32_t>& out, StepFlags& f) {
    ++gen_;
    out.clear();
    f = {};
    for (int32_t leaf : leaves) {
      const Frame fr = pool[leaf];
      const auto& nd = pda_->nodes[fr.node];
      for (uint32_t e = nd.byte_begin; e < nd.byte_end; ++e) {
        const auto& be = pda_->bytes[e];
        if (b >= be.lo && b <= be.hi) closure(pool, pool.intern(be.target, fr.parent), out, f);
      }
    }
  }

 private:
  void closure(StackPool& pool, int32_t s, std::vector<int32_t>& out, StepFlags& f) {
    if (static_cast<size_t>(s) >= stamp_.size()) stamp_.resize(std::max<size_t>(s + 1, stamp_.size() * 2), 0);
    if (stamp_[s] == gen_) return;
    stamp_[s] = gen_;
    const Frame fr = pool[s];
    const auto& nd = pda_->nodes[fr.node];
    if (nd.byte_begin != nd.byte_end) out.push_back(s);
    for (uint32_t c = nd.call_begin; c < nd.call_end; ++c) {
      const auto& ce = pda_->calls[c];
      int32_t parent = ce.tail ? fr.parent : pool.intern(ce.target, fr.parent);
      closure(pool, pool.intern(pda_->rule_start[ce.rule], parent), out, f);
    }
    if (nd.final) {
      if (fr.parent == kRoot) f.root_end = true;
      else if (fr.parent == kSentinel) f.sentinel = true;
      else closure(pool, fr.parent, out, f);
    }
  }

  const Pda* pda_;
  std::vector<uint32_t> stamp_;
  uint32_t gen_ = 0;
};

struct MaskEntry {
  bool dense = false;
  std::vector<int32_t> accepted;   // !dense
  std::vector<uint32_t> bits;      // dense
  std::vector<int32_t> uncertain;  // in trie order
};

inline void set_bit(uint32_t* w, int32_t id) { w[id >> 5] |= 1u << (id & 31); }

}  // namespace

// ---------------------------------------------------------------------------------------------
// Compilation

struct CompiledGrammar::Impl {
  std::shared_ptr<const Vocabulary> vocab;
  Pda pda;
  std::vector<int32_t> entry_of;  // node -> index into entries, -1 if no byte edges
  std::vector<MaskEntry> entries;
  double seconds = 0;
};

namespace {

// Per-thread state of the cache walks. The pool is kept across walks, so the memo of single-leaf
// transitions (frame, byte) -> next leaves, which is most of a walk, is shared by all of them.
struct WalkContext {
  explicit WalkContext(const Pda& pda) : stepper(pda) {}
  StackPool pool;
  Stepper stepper;
  std::vector<std::vector<int32_t>> L;
  struct Step {
    uint32_t begin, end;  // into arena
    bool sentinel;
  };
  std::vector<int32_t> memo;  // frame * 256 + byte -> index into steps, -1 unknown
  std::vector<Step> steps;
  std::vector<int32_t> arena, scratch;
  static constexpr size_t kMaxMemoFrames = 1 << 14;  // memo up to 16 MiB per thread

  // Advances the one-leaf state {leaf} by b into out; returns the sentinel flag.
  bool advance_one(int32_t leaf, uint8_t b, std::vector<int32_t>& out) {
    if (static_cast<size_t>(leaf) >= kMaxMemoFrames) {
      StepFlags f;
      scratch.assign(1, leaf);
      stepper.advance(pool, scratch, b, out, f);
      return f.sentinel;
    }
    const size_t key = static_cast<size_t>(leaf) * 256 + b;
    if (key >= memo.size()) memo.resize(std::max(key + 1, memo.size() * 2), -1);
    if (memo[key] < 0) {
      StepFlags f;
      scratch.assign(1, leaf);
      stepper.advance(pool, scratch, b, out, f);
      memo[key] = static_cast<int32_t>(steps.size());
      steps.push_back({static_cast<uint32_t>(arena.size()), static_cast<uint32_t>(arena.size() + out.size()), f.sentinel});
      arena.insert(arena.end(), out.begin(), out.end());
      return f.sentinel;
    }
    const Step& st = steps[memo[key]];
    out.assign(arena.begin() + st.begin, arena.begin() + st.end);
    return st.sentinel;
  }
};

void build_entry(const Pda& pda, const Vocabulary::Impl& v, int32_t node, WalkContext& cx, MaskEntry& out) {
  const auto& follow = pda.follow[pda.nodes[node].rule];
  const int32_t V = static_cast<int32_t>(v.tokens.size());
  const size_t D = v.max_depth + 1;
  auto& L = cx.L;
  if (L.size() < D) L.resize(D);
  std::vector<char> S(D, 0), U(D, 0);
  L[0].assign(1, cx.pool.intern(node, kSentinel));
  std::vector<int32_t> accepted;
  const auto& trie = v.trie;
  const int32_t T = static_cast<int32_t>(trie.size());
  for (int32_t i = 1; i < T;) {
    const auto& tn = trie[i];
    const int32_t d = tn.depth;
    if (L[d - 1].size() == 1) {
      S[d] = cx.advance_one(L[d - 1][0], tn.byte, L[d]);
    } else {
      StepFlags f;
      cx.stepper.advance(cx.pool, L[d - 1], tn.byte, L[d], f);
      S[d] = f.sentinel;
    }
    U[d] = U[d - 1] || (S[d - 1] && follow.test(tn.byte));
    const bool alive = !L[d].empty();
    if (tn.own) {
      if (alive || S[d]) {
        for (int32_t k = tn.sub_begin; k < tn.sub_begin + tn.own; ++k) accepted.push_back(v.sorted[k]);
      } else if (U[d]) {
        for (int32_t k = tn.sub_begin; k < tn.sub_begin + tn.own; ++k) out.uncertain.push_back(v.sorted[k]);
      }
    }
    if (!alive && !S[d]) {
      if (U[d])
        for (int32_t k = tn.sub_begin + tn.own; k < tn.sub_end; ++k) out.uncertain.push_back(v.sorted[k]);
      i = tn.end;
      continue;
    }
    ++i;
  }
  if (static_cast<int64_t>(accepted.size()) * 32 > V) {
    out.dense = true;
    out.bits.assign((V + 31) / 32, 0);
    for (int32_t id : accepted) set_bit(out.bits.data(), id);
  } else {
    out.accepted = std::move(accepted);
  }
}

}  // namespace

CompiledGrammar compile(const Grammar& grammar, std::shared_ptr<const Vocabulary> vocab) {
  if (!vocab) fail("grammar: no vocabulary");
  const auto t0 = std::chrono::steady_clock::now();
  auto impl = std::make_shared<CompiledGrammar::Impl>();
  impl->vocab = std::move(vocab);
  impl->pda = detail::build_pda(grammar);
  const Pda& pda = impl->pda;
  impl->entry_of.assign(pda.nodes.size(), -1);
  std::vector<int32_t> todo;
  for (size_t x = 0; x < pda.nodes.size(); ++x) {
    if (pda.nodes[x].byte_begin == pda.nodes[x].byte_end) continue;
    impl->entry_of[x] = static_cast<int32_t>(todo.size());
    todo.push_back(static_cast<int32_t>(x));
  }
  impl->entries.resize(todo.size());
  // Walks are independent: spread them over threads (each with its own pool and memo).
  const size_t hw = std::max(1u, std::thread::hardware_concurrency());
  const size_t n_threads = std::min<size_t>({hw, 16, (todo.size() + 7) / 8});
  std::atomic<size_t> next{0};
  std::exception_ptr error;
  std::mutex error_mutex;
  auto work = [&] {
    try {
      WalkContext cx(pda);
      for (size_t k; (k = next.fetch_add(1)) < todo.size();)
        build_entry(pda, impl->vocab->impl(), todo[k], cx, impl->entries[k]);
    } catch (...) {
      std::lock_guard<std::mutex> lock(error_mutex);
      error = std::current_exception();
    }
  };
  if (n_threads <= 1) {
    work();
  } else {
    std::vector<std::thread> threads;
    for (size_t t = 0; t < n_threads; ++t) threads.emplace_back(work);
    for (auto& t : threads) t.join();
  }
  if (error) std::rethrow_exception(error);
  impl->seconds = std::chrono::duration<double>(std::chrono::steady_clock::now() - t0).count();
  return CompiledGrammar(std::move(impl));
}

CompiledGrammar compile_json_schema(std::string_view schema_json, std::shared_ptr<const Vocabulary> vocab,
                                    const JsonSchemaOptions& options) {
  return compile(grammar_from_json_schema(schema_json, options), std::move(vocab));
}
CompiledGrammar compile_json_object(std::shared_ptr<const Vocabulary> vocab, const JsonSchemaOptions& options) {
  return compile(grammar_json_object(options), std::move(vocab));
}
CompiledGrammar compile_regex(std::string_view pattern, std::shared_ptr<const Vocabulary> vocab) {
  return compile(grammar_from_regex(pattern), std::move(vocab));
}
CompiledGrammar compile_choice(std::span<const std::string> choices, std::shared_ptr<const Vocabulary> vocab) {
  return compile(grammar_from_choice(choices), std::move(vocab));
}
CompiledGrammar compile_ebnf(std::string_view text, std::shared_ptr<const Vocabulary> vocab, std::string_view root_rule) {
  return compile(grammar_from_ebnf(text, root_rule), std::move(vocab));
}

const Vocabulary& CompiledGrammar::vocabulary() const { return *impl_->vocab; }
int32_t CompiledGrammar::num_states() const { return static_cast<int32_t>(impl_->pda.nodes.size()); }
int32_t CompiledGrammar::num_cached_states() const { return static_cast<int32_t>(impl_->entries.size()); }
double CompiledGrammar::compile_seconds() const { return impl_->seconds; }
size_t CompiledGrammar::cache_bytes() const {
  size_t n = 0;
  for (const auto& e : impl_->entries) n += 4 * (e.accepted.size() + e.bits.size() + e.uncertain.size());
  return n;
}

// ---------------------------------------------------------------------------------------------
// Matcher

struct GrammarMatcher::Impl {
  struct State {
    uint32_t leaf_begin, leaf_end;  // into leaves
    size_t pool_size;               // frames that existed when this state was made
    bool can_end, terminated;
  };
  const CompiledGrammar::Impl* g;
  StackPool pool;
  Stepper stepper;
  std::vector<int32_t> leaves;
  std::vector<State> history;
  // scratch
  std::vector<std::vector<int32_t>> depth_leaves;
  std::vector<char> depth_end;
  std::vector<int32_t> cur, next, nodes;

  explicit Impl(const CompiledGrammar::Impl* gi) : g(gi), stepper(gi->pda) { reset(); }

  void reset() {
    pool = StackPool();
    leaves.clear();
    history.clear();
    StepFlags f;
    std::vector<int32_t> out;
    stepper.start(pool, pool.intern(g->pda.rule_start[g->pda.root], kRoot), out, f);
    push_state(out, f.root_end, false);
  }
  void push_state(const std::vector<int32_t>& ls, bool can_end, bool terminated) {
    State s{static_cast<uint32_t>(leaves.size()), 0, pool.size(), can_end, terminated};
    leaves.insert(leaves.end(), ls.begin(), ls.end());
    s.leaf_end = static_cast<uint32_t>(leaves.size());
    history.push_back(s);
  }
  const State& state() const { return history.back(); }

  // Feeds bytes from the current state; false if they die (the pool is restored then).
  bool feed(std::string_view bytes) {
    const State& st = state();
    if (st.terminated) return false;
    const size_t mark = pool.size();
    cur.assign(leaves.begin() + st.leaf_begin, leaves.begin() + st.leaf_end);
    StepFlags f;
    f.root_end = st.can_end;
    size_t i = 0;
    for (; i < bytes.size() && !cur.empty(); ++i) {
      stepper.advance(pool, cur, static_cast<uint8_t>(bytes[i]), next, f);
      cur.swap(next);
    }
    if (i < bytes.size() || (cur.empty() && !f.root_end)) {
      pool.truncate(mark);
      return false;
    }
    push_state(cur, f.root_end, false);
    return true;
  }

  void check_uncertain(int32_t leaf, const std::vector<int32_t>& unc, uint32_t* words) {
    const auto& tokens = g->vocab->impl().tokens;
    const size_t D = g->vocab->impl().max_depth + 1;
    if (depth_leaves.size() < D) depth_leaves.resize(D), depth_end.resize(D);
    depth_leaves[0].assign(1, leaf);
    const std::string* prev = nullptr;
    size_t valid = 0;  // depth_leaves[0..valid] hold prev's states
    size_t dead = std::numeric_limits<size_t>::max();  // prev's prefix of this length is dead
    for (int32_t id : unc) {
      if (bitmask_allows(words, id)) continue;
      const std::string& t = tokens[id];
      size_t l = 0;
      if (prev) {
        const size_t m = std::min(prev->size(), t.size());
        while (l < m && (*prev)[l] == t[l]) ++l;
        if (l >= dead) continue;
      }
      l = std::min(l, valid);
      dead = std::numeric_limits<size_t>::max();
      prev = &t;
      bool ok = true;
      size_t d = l;
      while (d < t.size()) {
        StepFlags f;
        stepper.advance(pool, depth_leaves[d], static_cast<uint8_t>(t[d]), depth_leaves[d + 1], f);
        ++d;
        depth_end[d] = f.root_end;
        if (depth_leaves[d].empty()) {
          if (d < t.size() || !f.root_end) {
            ok = false;
            dead = d;
          }
          break;
        }
      }
      valid = d;
      if (ok) set_bit(words, id);
    }
  }

  void fill(uint32_t* words) {
    const auto& v = g->vocab->impl();
    const int32_t W = (static_cast<int32_t>(v.tokens.size()) + 31) / 32;
    std::memset(words, 0, sizeof(uint32_t) * W);
    const State st = state();
    if (!st.terminated) {
      nodes.clear();
      for (uint32_t k = st.leaf_begin; k < st.leaf_end; ++k) nodes.push_back(pool[leaves[k]].node);
      std::sort(nodes.begin(), nodes.end());
      nodes.erase(std::unique(nodes.begin(), nodes.end()), nodes.end());
      for (int32_t n : nodes) {
        const MaskEntry& e = g->entries[g->entry_of[n]];
        if (e.dense) {
          const uint32_t* b = e.bits.data();
          for (int32_t w = 0; w < W; ++w) words[w] |= b[w];
        } else {
          for (int32_t id : e.accepted) set_bit(words, id);
        }
      }
      const size_t mark = pool.size();
      for (uint32_t k = st.leaf_begin; k < st.leaf_end; ++k) {
        const int32_t leaf = leaves[k];
        const MaskEntry& e = g->entries[g->entry_of[pool[leaf].node]];
        if (!e.uncertain.empty()) check_uncertain(leaf, e.uncertain, words);
      }
      pool.truncate(mark);
    }
    if (st.can_end || st.terminated)
      for (int32_t id : v.stop_ids) set_bit(words, id);
  }
};

GrammarMatcher::GrammarMatcher(CompiledGrammar grammar)
    : grammar_(std::move(grammar)), impl_(std::make_unique<Impl>(&grammar_.impl())) {}
GrammarMatcher::~GrammarMatcher() = default;
GrammarMatcher::GrammarMatcher(GrammarMatcher&&) noexcept = default;
GrammarMatcher& GrammarMatcher::operator=(GrammarMatcher&&) noexcept = default;
GrammarMatcher::GrammarMatcher(const GrammarMatcher& o) : grammar_(o.grammar_), impl_(std::make_unique<Impl>(*o.impl_)) {}

void GrammarMatcher::fill_next_token_bitmask(uint32_t* words) { impl_->fill(words); }

bool GrammarMatcher::accept_token(int32_t id) {
  const auto& v = grammar_.vocabulary().impl();
  if (id < 0 || id >= static_cast<int32_t>(v.tokens.size())) return false;
  const auto& st = impl_->state();
  if (st.terminated) return false;
  if (v.stop[id]) {
    if (!st.can_end) return false;
    std::vector<int32_t> none;
    impl_->push_state(none, false, true);
    return true;
  }
  if (!v.usable[id]) return false;
  return impl_->feed(v.tokens[id]);
}

bool GrammarMatcher::accept_string(std::string_view bytes) { return impl_->feed(bytes); }

int GrammarMatcher::accept_tokens(std::span<const int32_t> ids) {
  int n = 0;
  for (int32_t id : ids) {
    if (!accept_token(id)) break;
    ++n;
  }
  return n;
}

void GrammarMatcher::rollback(int n) {
  if (n < 0 || n > num_accepted()) fail("grammar: cannot roll back {} tokens ({} accepted)", n, num_accepted());
  auto& h = impl_->history;
  h.resize(h.size() - n);
  impl_->leaves.resize(h.back().leaf_end);
  impl_->pool.truncate(h.back().pool_size);
}

void GrammarMatcher::reset() { impl_->reset(); }
bool GrammarMatcher::can_terminate() const { return impl_->state().can_end; }
bool GrammarMatcher::is_terminated() const { return impl_->state().terminated; }
int GrammarMatcher::num_accepted() const { return static_cast<int>(impl_->history.size()) - 1; }

void apply_token_bitmask(std::span<float> logits, const uint32_t* words, int32_t vocab_size) {
  const float neg = -std::numeric_limits<float>::infinity();
  const size_t n = logits.size();
  const size_t lim = std::min<size_t>(n, static_cast<size_t>(std::max(vocab_size, 0)));
  for (size_t i = 0; i < lim; ++i)
    if (!((words[i >> 5] >> (i & 31)) & 1u)) logits[i] = neg;
  for (size_t i = lim; i < n; ++i) logits[i] = neg;
}

}  // namespace tandem::grammar
