#pragma once
// The Lua scripts of the Redis backend. Each runs atomically on the server, which is what
// makes "check the delivery is still ours, then act" race-free against other consumers.
// Private to backends/redis.
//
// Common layout: KEYS[1] = stream, KEYS[2] = the group's delayed set, KEYS[3] = the group's
// failed-attempt counts (a hash entry id -> Delivery::failed_attempts, entries only for
// deliveries that failed at least once; KEYS[4] for the dead-letter script); ARGV[1] = group,
// ARGV[2] = consumer, ARGV[3] = entry id, ARGV[4] = the delivery count the caller holds.
// Ownership check results: 0 = no longer pending (acked, or trimmed away), -1 = pending but
// held by another consumer or redelivered since (count changed), 1 = done.

#include "connection.h"

namespace eventbus::redis::scripts {

// Consumer name that owns entries waiting in the delayed set. Contains a space, which
// ValidateName forbids, so no real consumer can have it.
inline constexpr absl::string_view kParkingConsumer = "eventbus delayed";

#define EVENTBUS_REDIS_HELD_CHECK                                                \
  "local p = redis.call('XPENDING', KEYS[1], ARGV[1], ARGV[3], ARGV[3], 1)\n"     \
  "if #p == 0 then return 0 end\n"                                               \
  "if p[1][2] ~= ARGV[2] or p[1][4] ~= tonumber(ARGV[4]) then return -1 end\n"

inline constexpr LuaScript kAck = {"ack", EVENTBUS_REDIS_HELD_CHECK R"lua(
redis.call('XACK', KEYS[1], ARGV[1], ARGV[3])
redis.call('ZREM', KEYS[2], ARGV[3])
redis.call('HDEL', KEYS[3], ARGV[3])
return 1
)lua"};

// ARGV[5] = due time (ms, stream clock), ARGV[6] = parking consumer, ARGV[7] = "1" when the
// attempt failed (NackKind::kFailed: one more failed attempt), else "0".
// JUSTID keeps the delivery counter; the redelivery that claims it later increments it.
inline constexpr LuaScript kNack = {"nack", EVENTBUS_REDIS_HELD_CHECK R"lua(
redis.call('XCLAIM', KEYS[1], ARGV[1], ARGV[6], 0, ARGV[3], 'JUSTID')
redis.call('ZADD', KEYS[2], ARGV[5], ARGV[3])
if ARGV[7] == '1' then redis.call('HINCRBY', KEYS[3], ARGV[3], 1) end
return 1
)lua"};

// Re-claiming to the holder with JUSTID resets the idle time without counting a delivery.
inline constexpr LuaScript kExtend = {"extend", EVENTBUS_REDIS_HELD_CHECK R"lua(
redis.call('XCLAIM', KEYS[1], ARGV[1], ARGV[2], 0, ARGV[3], 'JUSTID')
return 1
)lua"};

// KEYS[3] = dead-letter stream, KEYS[4] = failed-attempt counts; ARGV[5] = MAXLEN (0 = none);
// ARGV[6..] = the dead letter's fields. Returns the dead letter's entry id.
inline constexpr LuaScript kDeadLetter = {"dead-letter", EVENTBUS_REDIS_HELD_CHECK R"lua(
local xadd = {'XADD', KEYS[3]}
if ARGV[5] ~= '0' then
  table.insert(xadd, 'MAXLEN'); table.insert(xadd, '~'); table.insert(xadd, ARGV[5])
end
table.insert(xadd, '*')
for i = 6, #ARGV do table.insert(xadd, ARGV[i]) end
local id = redis.call(unpack(xadd))
redis.call('XACK', KEYS[1], ARGV[1], ARGV[3])
redis.call('ZREM', KEYS[2], ARGV[3])
redis.call('HDEL', KEYS[4], ARGV[3])
return id
)lua"};

#undef EVENTBUS_REDIS_HELD_CHECK

// Claims due delayed entries for the calling consumer. ARGV[3] = now (ms, stream clock),
// ARGV[4] = max. Returns {id, {field, value, ...}, delivery count, failed attempts} per entry;
// entries that were acked or trimmed meanwhile are dropped from the set.
inline constexpr LuaScript kPromote = {"promote", R"lua(
local due = redis.call('ZRANGEBYSCORE', KEYS[2], '-inf', ARGV[3], 'LIMIT', 0, tonumber(ARGV[4]))
local out = {}
for _, id in ipairs(due) do
  redis.call('ZREM', KEYS[2], id)
  local claimed = redis.call('XCLAIM', KEYS[1], ARGV[1], ARGV[2], 0, id)
  local e = claimed[1]
  if e and e[2] then
    local p = redis.call('XPENDING', KEYS[1], ARGV[1], id, id, 1)
    table.insert(out, {e[1], e[2], p[1][4], tonumber(redis.call('HGET', KEYS[3], id) or 0)})
  elseif e then
    redis.call('XACK', KEYS[1], ARGV[1], id)
    redis.call('HDEL', KEYS[3], id)
  end
end
return out
)lua"};

// XAUTOCLAIM for the calling consumer. ARGV[3] = min idle (ms), ARGV[4] = max,
// ARGV[5] = now (ms, stream clock), ARGV[6] = parking consumer, ARGV[7] = the cursor where the
// previous call stopped ('0-0' = from the start).
// - The scan goes on from ARGV[7] and wraps around to '0-0' once: restarting at '0-0' on every
//   call would look at the same head of the pending list each time (XAUTOCLAIM examines at most
//   10 x COUNT entries per call), so an orphan behind a few hundred parked or still active
//   entries would never be reached.
// - Entries waiting in the delayed set and not yet due are handed back to the parking
//   consumer with their delivery counter restored (XAUTOCLAIM cannot skip them, and a nack
//   delay must hold even against Reclaim).
// - Entries deleted by trimming (XAUTOCLAIM's third element, Redis 7) are acknowledged so
//   they are not met again.
// Returns {next cursor, {{id, {field, value, ...}, delivery count, failed attempts} per claimed
// entry}}.
inline constexpr LuaScript kReclaim = {"reclaim", R"lua(
local max = tonumber(ARGV[4])
local now = tonumber(ARGV[5])
local out = {}
local start = ARGV[7]
local cursor = start
local wrapped = start == '0-0'
for round = 1, 16 do
  local r = redis.call('XAUTOCLAIM', KEYS[1], ARGV[1], ARGV[2], ARGV[3], cursor, 'COUNT', max - #out)
  cursor = r[1]
  for _, e in ipairs(r[2]) do
    local id = e[1]
    local p = redis.call('XPENDING', KEYS[1], ARGV[1], id, id, 1)
    local due = redis.call('ZSCORE', KEYS[2], id)
    if due and tonumber(due) > now then
      redis.call('XCLAIM', KEYS[1], ARGV[1], ARGV[6], 0, id, 'RETRYCOUNT', p[1][4] - 1, 'JUSTID')
    else
      if due then redis.call('ZREM', KEYS[2], id) end
      if e[2] then
        table.insert(out, {id, e[2], p[1][4], tonumber(redis.call('HGET', KEYS[3], id) or 0)})
      else
        redis.call('XACK', KEYS[1], ARGV[1], id)
        redis.call('HDEL', KEYS[3], id)
      end
    end
  end
  for _, id in ipairs(r[3] or {}) do
    redis.call('XACK', KEYS[1], ARGV[1], id)
    redis.call('ZREM', KEYS[2], id)
    redis.call('HDEL', KEYS[3], id)
  end
  if #out >= max then break end
  if cursor == '0-0' then
    if wrapped then break end
    wrapped = true
  end
end
return {cursor, out}
)lua"};

}  // namespace eventbus::redis::scripts
