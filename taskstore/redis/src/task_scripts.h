#pragma once
// The Lua scripts of the Redis task store. Each runs atomically on the server, which is what
// makes "check the state/version, then change it and its indexes" race-free against other
// executors. Private to taskstore/redis.
//
// Every script gets the key prefix as ARGV[1] and computes its keys from it (see
// redis_task_store.h for the layout). Times are unix microseconds as decimal strings, with
// -9e15 / 9e15 for InfinitePast / InfiniteFuture (exact as Lua numbers, which are doubles).
// A task hash keeps "m", its member "<17-digit created>|<id>" in the lexicographic indexes.

#include "connection.h"

namespace eventbus::taskstore::redis_scripts {

// A macro of plain literals (a raw string cannot span macro lines), pasted before each script.
#define EVENTBUS_TASKSTORE_LUA_PRELUDE \
  "local P = ARGV[1]\n" \
  "local FINAL = {succeeded = true, failed = true, dead_lettered = true, cancelled = true}\n" \
  "local function tkey(id) return P .. 'task:' .. id end\n" \
  "-- The time indexes hold a task only in the state where a query looks for it.\n" \
  "local function timed_remove(id)\n" \
  "  redis.call('ZREM', P .. 'due', id)\n" \
  "  redis.call('ZREM', P .. 'running', id)\n" \
  "  redis.call('ZREM', P .. 'expiring', id)\n" \
  "end\n" \
  "local function timed_add(id, state, run_at, lease, expires)\n" \
  "  if state == 'scheduled' then redis.call('ZADD', P .. 'due', run_at, id)\n" \
  "  elseif state == 'running' then redis.call('ZADD', P .. 'running', lease, id)\n" \
  "  elseif FINAL[state] then redis.call('ZADD', P .. 'expiring', expires, id) end\n" \
  "end\n" \
  "local function state_add(m, state, type)\n" \
  "  redis.call('ZADD', P .. 'state:' .. state, 0, m)\n" \
  "  redis.call('ZADD', P .. 'ts:' .. state .. ':' .. type, 0, m)\n" \
  "end\n" \
  "local function state_remove(m, state, type)\n" \
  "  redis.call('ZREM', P .. 'state:' .. state, m)\n" \
  "  redis.call('ZREM', P .. 'ts:' .. state .. ':' .. type, m)\n" \
  "end\n"

// ARGV: prefix, id, now, unique key, m, then field/value pairs of the new record.
// Returns {0 created | 1 id taken | 2 unique key taken, the stored hash}.
inline constexpr redis::LuaScript kCreate = {"taskstore create", EVENTBUS_TASKSTORE_LUA_PRELUDE R"lua(
local id, now, ukey, m = ARGV[2], ARGV[3], ARGV[4], ARGV[5]
local k = tkey(id)
if redis.call('EXISTS', k) == 1 then return {1, redis.call('HGETALL', k)} end
if ukey ~= '' then
  local holder = redis.call('GET', P .. 'unique:' .. ukey)
  if holder then
    local h = redis.call('HMGET', tkey(holder), 'state', 'uuntil')
    if h[1] and (not FINAL[h[1]] or tonumber(now) < tonumber(h[2])) then
      return {2, redis.call('HGETALL', tkey(holder))}
    end
  end
  redis.call('SET', P .. 'unique:' .. ukey, id)
end
local f = {}
for j = 6, #ARGV do f[#f + 1] = ARGV[j] end
redis.call('HSET', k, unpack(f))
redis.call('HSET', k, 'id', id, 'created', now, 'updated', now, 'version', 1, 'm', m)
local t = redis.call('HMGET', k, 'state', 'type', 'run_at', 'lease', 'expires', 'sched')
redis.call('ZADD', P .. 'all', 0, m)
redis.call('ZADD', P .. 'type:' .. t[2], 0, m)
if t[6] ~= '' then redis.call('ZADD', P .. 'sched:' .. t[6], 0, m) end
redis.call('SADD', P .. 'types', t[2])
state_add(m, t[1], t[2])
timed_add(id, t[1], t[3], t[4], t[5])
return {0, redis.call('HGETALL', k)}
)lua"};

// ARGV: prefix, count, then per update: id, from ("a,b" or ""), expected version (0 = any),
// now, increment attempts (0/1), append history (0/1), the entry, number of pairs, pairs...
// Applied in order; returns per update {0, hash} | {-1} (not found) | {-2, state, version}.
inline constexpr redis::LuaScript kUpdateMany = {"taskstore update", EVENTBUS_TASKSTORE_LUA_PRELUDE R"lua(
local function append_history(h, e)
  local t = string.gsub(h, '^%s+', '')
  t = string.gsub(t, '%s+$', '')
  if t == '' or t == '[]' or string.sub(t, -1) ~= ']' then return '[' .. e .. ']' end
  t = string.sub(t, 1, -2)
  t = string.gsub(t, '%s+$', '')
  if t == '[' then return '[' .. e .. ']' end
  return t .. ',' .. e .. ']'
end
local out = {}
local i = 3
for u = 1, tonumber(ARGV[2]) do
  local id, from, ev, now = ARGV[i], ARGV[i + 1], tonumber(ARGV[i + 2]), ARGV[i + 3]
  local incr, has_append, entry = ARGV[i + 4] == '1', ARGV[i + 5] == '1', ARGV[i + 6]
  local first = i + 8
  local last = first + 2 * tonumber(ARGV[i + 7]) - 1
  i = last + 1
  local k = tkey(id)
  local cur = redis.call('HMGET', k, 'state', 'version', 'type', 'm')
  if not cur[1] then
    out[u] = {-1}
  elseif (from ~= '' and not string.find(',' .. from .. ',', ',' .. cur[1] .. ',', 1, true))
      or (ev ~= 0 and tonumber(cur[2]) ~= ev) then
    out[u] = {-2, cur[1], cur[2]}
  else
    if last >= first then
      local f = {}
      for j = first, last do f[#f + 1] = ARGV[j] end
      redis.call('HSET', k, unpack(f))
    end
    if incr then redis.call('HINCRBY', k, 'attempts', 1) end
    if has_append then
      redis.call('HSET', k, 'history', append_history(redis.call('HGET', k, 'history') or '', entry))
    end
    redis.call('HSET', k, 'updated', now)
    redis.call('HINCRBY', k, 'version', 1)
    local n = redis.call('HMGET', k, 'state', 'run_at', 'lease', 'expires')
    timed_remove(id)
    timed_add(id, n[1], n[2], n[3], n[4])
    if n[1] ~= cur[1] then
      state_remove(cur[4], cur[1], cur[3])
      state_add(cur[4], n[1], cur[3])
    end
    out[u] = {0, redis.call('HGETALL', k)}
  end
end
return out
)lua"};

// ARGV: prefix, ids... Returns one hash per id (empty for a missing one).
inline constexpr redis::LuaScript kGetMany = {"taskstore get many", EVENTBUS_TASKSTORE_LUA_PRELUDE R"lua(
local out = {}
for j = 2, #ARGV do out[#out + 1] = redis.call('HGETALL', tkey(ARGV[j])) end
return out
)lua"};

// ARGV: prefix, now, lease_until, limit, owner. Returns the claimed hashes, earliest run_at
// first. Claimed tasks stay in P due (still scheduled): the lease check skips them.
inline constexpr redis::LuaScript kClaimDue = {"taskstore claim due", EVENTBUS_TASKSTORE_LUA_PRELUDE R"lua(
local now, limit = tonumber(ARGV[2]), tonumber(ARGV[4])
local out = {}
local offset = 0
while #out < limit do
  local ids = redis.call('ZRANGEBYSCORE', P .. 'due', '-inf', ARGV[2], 'LIMIT', offset, 100)
  if #ids == 0 then break end
  for _, id in ipairs(ids) do
    local k = tkey(id)
    if tonumber(redis.call('HGET', k, 'lease')) < now then
      redis.call('HSET', k, 'owner', ARGV[5], 'lease', ARGV[3], 'updated', ARGV[2])
      redis.call('HINCRBY', k, 'version', 1)
      out[#out + 1] = redis.call('HGETALL', k)
      if #out >= limit then break end
    end
  end
  offset = offset + #ids
end
return out
)lua"};

// ARGV: prefix, now, limit. Running tasks with lease < now, oldest lease first.
inline constexpr redis::LuaScript kFindStuck = {"taskstore find stuck", EVENTBUS_TASKSTORE_LUA_PRELUDE R"lua(
local ids = redis.call('ZRANGEBYSCORE', P .. 'running', '-inf', '(' .. ARGV[2], 'LIMIT', 0, tonumber(ARGV[3]))
local out = {}
for _, id in ipairs(ids) do out[#out + 1] = redis.call('HGETALL', tkey(id)) end
return out
)lua"};

// ARGV: prefix, index key (without prefix), cursor member ('' = newest), limit, state filter,
// type filter ('' = any). Returns {next cursor ('' = last page), hash, hash, ...}.
inline constexpr redis::LuaScript kList = {"taskstore list", EVENTBUS_TASKSTORE_LUA_PRELUDE R"lua(
local key = P .. ARGV[2]
local bound = ARGV[3] == '' and '+' or ('(' .. ARGV[3])
local limit, st, ty = tonumber(ARGV[4]), ARGV[5], ARGV[6]
local ids, members = {}, {}
while #ids <= limit do
  local ms = redis.call('ZREVRANGEBYLEX', key, bound, '-', 'LIMIT', 0, 200)
  if #ms == 0 then break end
  for _, m in ipairs(ms) do
    bound = '(' .. m
    local id = string.sub(m, 19)
    local ok = true
    if st ~= '' or ty ~= '' then
      local h = redis.call('HMGET', tkey(id), 'state', 'type')
      ok = (st == '' or h[1] == st) and (ty == '' or h[2] == ty)
    end
    if ok then
      ids[#ids + 1] = id
      members[#members + 1] = m
      if #ids > limit then break end
    end
  end
end
local out = {''}
if #ids > limit then out[1] = members[limit] end
for j = 1, math.min(#ids, limit) do out[#out + 1] = redis.call('HGETALL', tkey(ids[j])) end
return out
)lua"};

// ARGV: prefix. Returns per type with tasks {type, {8 counts in TaskState order}, oldest
// queued member or ''}.
inline constexpr redis::LuaScript kStats = {"taskstore stats", EVENTBUS_TASKSTORE_LUA_PRELUDE R"lua(
local STATES = {'scheduled', 'queued', 'running', 'retrying', 'succeeded', 'failed',
                'dead_lettered', 'cancelled'}
local out = {}
for _, ty in ipairs(redis.call('SMEMBERS', P .. 'types')) do
  local counts, total = {}, 0
  for j, st in ipairs(STATES) do
    counts[j] = redis.call('ZCARD', P .. 'ts:' .. st .. ':' .. ty)
    total = total + counts[j]
  end
  if total > 0 then
    local oldest = redis.call('ZRANGE', P .. 'ts:queued:' .. ty, 0, 0)
    out[#out + 1] = {ty, counts, oldest[1] or ''}
  end
end
return out
)lua"};

// ARGV: prefix, now, limit. Deletes final tasks with expires <= now and their index entries
// and unique key; returns how many.
inline constexpr redis::LuaScript kPurge = {"taskstore purge", EVENTBUS_TASKSTORE_LUA_PRELUDE R"lua(
local ids = redis.call('ZRANGEBYSCORE', P .. 'expiring', '-inf', ARGV[2], 'LIMIT', 0, tonumber(ARGV[3]))
for _, id in ipairs(ids) do
  local k = tkey(id)
  local t = redis.call('HMGET', k, 'state', 'type', 'm', 'sched', 'ukey')
  timed_remove(id)
  if t[1] then
    redis.call('ZREM', P .. 'all', t[3])
    redis.call('ZREM', P .. 'type:' .. t[2], t[3])
    if t[4] ~= '' then redis.call('ZREM', P .. 'sched:' .. t[4], t[3]) end
    state_remove(t[3], t[1], t[2])
    if t[5] ~= '' and redis.call('GET', P .. 'unique:' .. t[5]) == id then
      redis.call('DEL', P .. 'unique:' .. t[5])
    end
    redis.call('DEL', k)
  end
end
return #ids
)lua"};

#define EVENTBUS_TASKSTORE_SCHEDULE_PRELUDE \
  "local P = ARGV[1]\n"                     \
  "local function skey(id) return P .. 'schedule:' .. id end\n"

// ARGV: prefix, id, now, then field/value pairs. Returns {0, hash} or {1} (exists).
inline constexpr redis::LuaScript kCreateSchedule = {"taskstore create schedule", EVENTBUS_TASKSTORE_SCHEDULE_PRELUDE R"lua(
local id, now = ARGV[2], ARGV[3]
local k = skey(id)
if redis.call('EXISTS', k) == 1 then return {1} end
local f = {}
for j = 4, #ARGV do f[#f + 1] = ARGV[j] end
redis.call('HSET', k, unpack(f))
redis.call('HSET', k, 'id', id, 'created', now, 'version', 1)
redis.call('SADD', P .. 'schedules', id)
local s = redis.call('HMGET', k, 'paused', 'next')
if s[1] ~= '1' then redis.call('ZADD', P .. 'schedules:due', s[2], id) end
return {0, redis.call('HGETALL', k)}
)lua"};

// ARGV: prefix, id. Returns 1 when deleted, 0 when there was none.
inline constexpr redis::LuaScript kDeleteSchedule = {"taskstore delete schedule", EVENTBUS_TASKSTORE_SCHEDULE_PRELUDE R"lua(
redis.call('ZREM', P .. 'schedules:due', ARGV[2])
redis.call('SREM', P .. 'schedules', ARGV[2])
return redis.call('DEL', skey(ARGV[2]))
)lua"};

// ARGV: prefix. Every schedule's hash.
inline constexpr redis::LuaScript kListSchedules = {"taskstore list schedules", EVENTBUS_TASKSTORE_SCHEDULE_PRELUDE R"lua(
local out = {}
for _, id in ipairs(redis.call('SMEMBERS', P .. 'schedules')) do
  out[#out + 1] = redis.call('HGETALL', skey(id))
end
return out
)lua"};

// ARGV: prefix, now, lease_until, limit, owner. Like kClaimDue, over unpaused schedules.
inline constexpr redis::LuaScript kClaimDueSchedules = {"taskstore claim schedules", EVENTBUS_TASKSTORE_SCHEDULE_PRELUDE R"lua(
local now, limit = tonumber(ARGV[2]), tonumber(ARGV[4])
local out = {}
local offset = 0
while #out < limit do
  local ids = redis.call('ZRANGEBYSCORE', P .. 'schedules:due', '-inf', ARGV[2], 'LIMIT', offset, 100)
  if #ids == 0 then break end
  for _, id in ipairs(ids) do
    local k = skey(id)
    if tonumber(redis.call('HGET', k, 'lease')) < now then
      redis.call('HSET', k, 'owner', ARGV[5], 'lease', ARGV[3])
      redis.call('HINCRBY', k, 'version', 1)
      out[#out + 1] = redis.call('HGETALL', k)
      if #out >= limit then break end
    end
  end
  offset = offset + #ids
end
return out
)lua"};

// ARGV: prefix, id, expected version, next_run_at, last_run_at, last task id, released lease
// time. Returns {0, hash} | {-1} (not found) | {-2, version}.
inline constexpr redis::LuaScript kAdvanceSchedule = {"taskstore advance schedule", EVENTBUS_TASKSTORE_SCHEDULE_PRELUDE R"lua(
local k = skey(ARGV[2])
local s = redis.call('HMGET', k, 'version', 'paused')
if not s[1] then return {-1} end
if tonumber(s[1]) ~= tonumber(ARGV[3]) then return {-2, s[1]} end
redis.call('HSET', k, 'next', ARGV[4], 'last', ARGV[5], 'last_task', ARGV[6], 'owner', '',
           'lease', ARGV[7])
redis.call('HINCRBY', k, 'version', 1)
if s[2] ~= '1' then redis.call('ZADD', P .. 'schedules:due', ARGV[4], ARGV[2]) end
return {0, redis.call('HGETALL', k)}
)lua"};

// ARGV: prefix, name, now, expires_at, then field/value pairs of the record. Deletes the
// records expired by now, then replaces this one.
inline constexpr redis::LuaScript kPutInstance = {"taskstore put instance", R"lua(
local P = ARGV[1]
local index = P .. 'instances'
for _, name in ipairs(redis.call('ZRANGEBYSCORE', index, '-inf', ARGV[3])) do
  redis.call('DEL', P .. 'instance:' .. name)
  redis.call('ZREM', index, name)
end
local k = P .. 'instance:' .. ARGV[2]
local f = {}
for j = 5, #ARGV do f[#f + 1] = ARGV[j] end
redis.call('DEL', k)
redis.call('HSET', k, 'name', ARGV[2], 'last_seen', ARGV[3], 'expires', ARGV[4], unpack(f))
redis.call('ZADD', index, ARGV[4], ARGV[2])
return 0
)lua"};

// ARGV: prefix, now. The hashes of the records with expires_at > now.
inline constexpr redis::LuaScript kListInstances = {"taskstore list instances", R"lua(
local P = ARGV[1]
local out = {}
for _, name in ipairs(redis.call('ZRANGEBYSCORE', P .. 'instances', '(' .. ARGV[2], '+inf')) do
  out[#out + 1] = redis.call('HGETALL', P .. 'instance:' .. name)
end
return out
)lua"};

// ARGV: prefix, name.
inline constexpr redis::LuaScript kDeleteInstance = {"taskstore delete instance", R"lua(
redis.call('ZREM', ARGV[1] .. 'instances', ARGV[2])
return redis.call('DEL', ARGV[1] .. 'instance:' .. ARGV[2])
)lua"};

}  // namespace eventbus::taskstore::redis_scripts
