#pragma once
// A fixed set of Redis connections shared by the threads of one task store. A hiredis context
// is not thread-safe, so each call borrows one connection for its duration and gives it back.
// Private to taskstore/redis.

#include <condition_variable>
#include <memory>
#include <mutex>
#include <vector>

#include "connection.h"

namespace eventbus::taskstore {

class RedisConnectionPool {
 public:
  RedisConnectionPool(redis::RedisConnection::Settings settings, int size)
      : settings_(std::move(settings)), size_(size < 1 ? 1 : size) {}

  // Returns the connection to the pool when destroyed.
  class Lease {
   public:
    Lease(RedisConnectionPool* pool, std::unique_ptr<redis::RedisConnection> connection)
        : pool_(pool), connection_(std::move(connection)) {}
    Lease(Lease&&) = default;
    Lease& operator=(Lease&&) = delete;
    ~Lease() {
      if (connection_ != nullptr) pool_->Return(std::move(connection_));
    }
    redis::RedisConnection* operator->() { return connection_.get(); }
    redis::RedisConnection& operator*() { return *connection_; }

   private:
    RedisConnectionPool* pool_;
    std::unique_ptr<redis::RedisConnection> connection_;
  };

  // Blocks while every connection is borrowed. The connection connects lazily (and again after
  // an I/O error), with the backoff of RedisConnection.
  Lease Borrow() {
    std::unique_lock lock(mu_);
    returned_.wait(lock, [&] { return !idle_.empty() || created_ < size_; });
    if (!idle_.empty()) {
      std::unique_ptr<redis::RedisConnection> connection = std::move(idle_.back());
      idle_.pop_back();
      return Lease(this, std::move(connection));
    }
    ++created_;
    return Lease(this, std::make_unique<redis::RedisConnection>(settings_));
  }

  const redis::RedisConnection::Settings& settings() const { return settings_; }

 private:
  void Return(std::unique_ptr<redis::RedisConnection> connection) {
    {
      std::lock_guard lock(mu_);
      idle_.push_back(std::move(connection));
    }
    returned_.notify_one();
  }

  const redis::RedisConnection::Settings settings_;
  const int size_;
  std::mutex mu_;
  std::condition_variable returned_;
  std::vector<std::unique_ptr<redis::RedisConnection>> idle_;
  int created_ = 0;
};

}  // namespace eventbus::taskstore
