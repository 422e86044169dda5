#include "offset_tracker.h"

#include "gtest/gtest.h"

namespace eventbus::kafka {
namespace {

TEST(OffsetTrackerTest, NothingToCommitBeforeAnythingWasTracked) {
  OffsetTracker tracker;
  EXPECT_EQ(tracker.Committable(), std::nullopt);
}

TEST(OffsetTrackerTest, CommitPointStaysAtTheLowestOffsetInFlight) {
  OffsetTracker tracker;
  for (int64_t offset = 10; offset < 15; ++offset) tracker.Track(offset);
  EXPECT_EQ(tracker.Committable(), 10);
  // Completing out of order does not move past the gap at 10.
  EXPECT_TRUE(tracker.MarkDone(12));
  EXPECT_TRUE(tracker.MarkDone(11));
  EXPECT_EQ(tracker.Committable(), 10);
  EXPECT_TRUE(tracker.MarkDone(10));
  EXPECT_EQ(tracker.Committable(), 13);
  EXPECT_TRUE(tracker.MarkDone(14));
  EXPECT_EQ(tracker.Committable(), 13);
  EXPECT_TRUE(tracker.MarkDone(13));
  EXPECT_EQ(tracker.Committable(), 15);
  EXPECT_EQ(tracker.in_flight(), 0u);
}

TEST(OffsetTrackerTest, GapsInOffsetsAreNotWaitedFor) {
  // Compaction and transaction markers leave holes: 3 and 4 never arrive.
  OffsetTracker tracker;
  tracker.Track(2);
  tracker.Track(5);
  EXPECT_TRUE(tracker.MarkDone(2));
  EXPECT_EQ(tracker.Committable(), 5);
  EXPECT_TRUE(tracker.MarkDone(5));
  EXPECT_EQ(tracker.Committable(), 6);
}

TEST(OffsetTrackerTest, DoubleCompletionAndUnknownOffsetsAreRejected) {
  OffsetTracker tracker;
  tracker.Track(0);
  tracker.Track(1);
  EXPECT_TRUE(tracker.MarkDone(1));
  EXPECT_FALSE(tracker.MarkDone(1));
  EXPECT_FALSE(tracker.MarkDone(7));
  EXPECT_EQ(tracker.Committable(), 0);
  EXPECT_TRUE(tracker.InFlight(0));
  EXPECT_FALSE(tracker.InFlight(1));
}

TEST(OffsetTrackerTest, RedeliveredOffsetsAreNotTrackedTwice) {
  OffsetTracker tracker;
  tracker.Track(4);
  tracker.Track(5);
  EXPECT_TRUE(tracker.MarkDone(4));
  tracker.Track(4);  // an older offset seen again (e.g. after a seek) does not reopen it
  EXPECT_EQ(tracker.Committable(), 5);
  EXPECT_EQ(tracker.in_flight(), 1u);
}

TEST(OffsetTrackerTest, ManyInterleavedCompletionsEndAtOnePastTheLast) {
  OffsetTracker tracker;
  constexpr int64_t kCount = 1000;
  for (int64_t offset = 0; offset < kCount; ++offset) tracker.Track(offset);
  // Complete odd offsets first, then even ones from the top down.
  for (int64_t offset = 1; offset < kCount; offset += 2) ASSERT_TRUE(tracker.MarkDone(offset));
  EXPECT_EQ(tracker.Committable(), 0);
  for (int64_t offset = kCount - 2; offset >= 2; offset -= 2) ASSERT_TRUE(tracker.MarkDone(offset));
  EXPECT_EQ(tracker.Committable(), 0);
  ASSERT_TRUE(tracker.MarkDone(0));
  EXPECT_EQ(tracker.Committable(), kCount);
}

}  // namespace
}  // namespace eventbus::kafka
