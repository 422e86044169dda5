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
TEST(DeliveryCountMetadataTest, RoundTripsTheCountsOfHeldOffsets) {
  const std::map<int64_t, int> counts = {{7, 1}, {9, 3}, {12, 2}};
  const std::string metadata = EncodeDeliveryCounts(counts, 7);
  EXPECT_EQ(metadata, "eventbus-dc1:7=1,9=3,12=2");
  EXPECT_EQ(DecodeDeliveryCounts(metadata, 7), counts);
  // Offsets below the commit point are done: neither written nor read back.
  EXPECT_EQ(EncodeDeliveryCounts(counts, 8), "eventbus-dc1:9=3,12=2");
  EXPECT_EQ(DecodeDeliveryCounts(metadata, 9), (std::map<int64_t, int>{{9, 3}, {12, 2}}));
  EXPECT_EQ(EncodeDeliveryCounts({}, 0), "");
}

TEST(DeliveryCountMetadataTest, StaysUnderTheBrokersBoundKeepingTheHighestCounts) {
  std::map<int64_t, int> counts;
  for (int64_t offset = 1000; offset < 3000; ++offset) counts[offset] = 1;
  counts[2500] = 7;  // the poison record
  const std::string metadata = EncodeDeliveryCounts(counts, 1000);
  EXPECT_LE(metadata.size(), kMaxCommitMetadataBytes);
  const std::map<int64_t, int> back = DecodeDeliveryCounts(metadata, 1000);
  EXPECT_EQ(back.at(2500), 7);
  EXPECT_TRUE(back.contains(1000));
  EXPECT_FALSE(back.contains(2999));
}

TEST(DeliveryCountMetadataTest, ForeignOrMalformedMetadataIsIgnoredEntryByEntry) {
  EXPECT_TRUE(DecodeDeliveryCounts("", 0).empty());
  EXPECT_TRUE(DecodeDeliveryCounts("some other client's note", 0).empty());
  EXPECT_EQ(DecodeDeliveryCounts("eventbus-dc1:5=2,x=1,6=-1,7=,=3,8=99999999999,9=4", 0),
            (std::map<int64_t, int>{{5, 2}, {9, 4}}));
}

}  // namespace eventbus::kafka
