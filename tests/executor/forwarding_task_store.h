#pragma once
// A task store that forwards every call to another one, for test stores that count or
// interpose on a few calls (override those, call the base for the real work).

#include <cstdint>
#include <string>
#include <vector>

#include "absl/status/status.h"
#include "absl/status/statusor.h"
#include "absl/strings/string_view.h"
#include "absl/time/time.h"
#include "absl/types/span.h"
#include "eventbus/taskstore/task_store.h"

namespace eventbus::executor::testing {

class ForwardingTaskStore : public taskstore::TaskStore {
 public:
  explicit ForwardingTaskStore(taskstore::TaskStore* inner) : inner_(inner) {}

  absl::string_view kind() const override { return inner_->kind(); }
  absl::Status Migrate() override { return inner_->Migrate(); }
  absl::StatusOr<taskstore::CreateResult> Create(const taskstore::TaskRecord& record,
                                                 absl::Time now) override {
    return inner_->Create(record, now);
  }
  absl::StatusOr<taskstore::TaskRecord> Get(absl::string_view id) override {
    return inner_->Get(id);
  }
  absl::StatusOr<std::vector<taskstore::TaskRecord>> GetMany(
      absl::Span<const std::string> ids) override {
    return inner_->GetMany(ids);
  }
  absl::StatusOr<taskstore::TaskRecord> Update(absl::string_view id,
                                               const taskstore::TaskUpdate& update) override {
    return inner_->Update(id, update);
  }
  std::vector<absl::StatusOr<taskstore::TaskRecord>> UpdateMany(
      absl::Span<const taskstore::TaskUpdateRequest> updates) override {
    return inner_->UpdateMany(updates);
  }
  absl::StatusOr<std::vector<taskstore::TaskRecord>> ClaimDue(absl::Time now,
                                                              absl::Duration lease, int limit,
                                                              absl::string_view owner) override {
    return inner_->ClaimDue(now, lease, limit, owner);
  }
  absl::StatusOr<std::vector<taskstore::TaskRecord>> FindStuck(absl::Time now,
                                                               int limit) override {
    return inner_->FindStuck(now, limit);
  }
  absl::StatusOr<taskstore::ListPage> List(const taskstore::ListQuery& query) override {
    return inner_->List(query);
  }
  absl::StatusOr<std::vector<taskstore::TypeStats>> Stats() override { return inner_->Stats(); }
  absl::StatusOr<int> PurgeExpired(absl::Time now, int limit) override {
    return inner_->PurgeExpired(now, limit);
  }
  absl::StatusOr<taskstore::Schedule> CreateSchedule(const taskstore::Schedule& schedule,
                                                     absl::Time now) override {
    return inner_->CreateSchedule(schedule, now);
  }
  absl::StatusOr<taskstore::Schedule> GetSchedule(absl::string_view id) override {
    return inner_->GetSchedule(id);
  }
  absl::StatusOr<std::vector<taskstore::Schedule>> ListSchedules() override {
    return inner_->ListSchedules();
  }
  absl::Status DeleteSchedule(absl::string_view id) override {
    return inner_->DeleteSchedule(id);
  }
  absl::StatusOr<std::vector<taskstore::Schedule>> ClaimDueSchedules(
      absl::Time now, absl::Duration lease, int limit, absl::string_view owner) override {
    return inner_->ClaimDueSchedules(now, lease, limit, owner);
  }
  absl::StatusOr<taskstore::Schedule> AdvanceSchedule(absl::string_view id,
                                                      int64_t expected_version,
                                                      absl::Time next_run_at,
                                                      absl::Time last_run_at,
                                                      absl::string_view last_task_id,
                                                      absl::Time now) override {
    return inner_->AdvanceSchedule(id, expected_version, next_run_at, last_run_at, last_task_id,
                                   now);
  }
  absl::Status PutInstance(const taskstore::InstanceRecord& record, absl::Time now,
                           absl::Duration ttl) override {
    return inner_->PutInstance(record, now, ttl);
  }
  absl::StatusOr<std::vector<taskstore::InstanceRecord>> ListInstances(absl::Time now) override {
    return inner_->ListInstances(now);
  }
  absl::Status DeleteInstance(absl::string_view name) override {
    return inner_->DeleteInstance(name);
  }

 private:
  taskstore::TaskStore* const inner_;
};

}  // namespace eventbus::executor::testing
