#include "server/stop_matcher.h"

#include <gtest/gtest.h>

namespace tandem::server {
namespace {

TEST(StopMatcher, NoStopsPassesEverything) {
  StopMatcher m({});
  EXPECT_EQ(m.push("hello").text, "hello");
  EXPECT_EQ(m.flush(), "");
}

TEST(StopMatcher, HoldsBackPossiblePrefixThenReleases) {
  StopMatcher m({"END"});
  auto r = m.push("abcE");
  EXPECT_EQ(r.text, "abc");
  EXPECT_EQ(r.matched, -1);
  EXPECT_EQ(m.held(), "E");
  r = m.push("Nx");  // "ENx" can no longer be "END"
  EXPECT_EQ(r.text, "ENx");
  EXPECT_EQ(m.held(), "");
}

TEST(StopMatcher, MatchAcrossPiecesTruncates) {
  StopMatcher m({"\n\n", "STOP"});
  EXPECT_EQ(m.push("one S").text, "one ");
  EXPECT_EQ(m.push("T").text, "");
  auto r = m.push("OP and more");
  EXPECT_EQ(r.text, "");
  EXPECT_EQ(r.matched, 1);
  EXPECT_TRUE(m.stopped());
  EXPECT_EQ(m.push("later").text, "");
  EXPECT_EQ(m.flush(), "");
}

TEST(StopMatcher, EarliestStopWins) {
  StopMatcher m({"cd", "b"});
  auto r = m.push("abcd");
  EXPECT_EQ(r.text, "a");
  EXPECT_EQ(r.matched, 1);
}

TEST(StopMatcher, FlushReleasesHeldText) {
  StopMatcher m({"xyz"});
  EXPECT_EQ(m.push("abxy").text, "ab");
  EXPECT_EQ(m.flush(), "xy");
}

TEST(StopMatcher, MultiByteStop) {
  StopMatcher m({"é!"});
  EXPECT_EQ(m.push("caf\xc3\xa9").text, "caf");
  auto r = m.push("!");
  EXPECT_EQ(r.matched, 0);
  EXPECT_EQ(r.text, "");
}

TEST(Sse, Framing) {
  EXPECT_EQ(sse_event("{\"a\":1}"), "data: {\"a\":1}\n\n");
  EXPECT_EQ(sse_done(), "data: [DONE]\n\n");
}

}  // namespace
}  // namespace tandem::server
