//! The Lua scripts that change views. Redis runs a script alone, start to end, so each one
//! is a transaction: it reads the checkpoint, compares it with the one the writer started
//! from (the fence), and only then writes. A script that fails half-way keeps what it wrote,
//! so each checks everything it can before its first write.
//!
//! Checkpoint positions and revisions are compared as the decimal text they are stored as.
//! Keys built inside a script (a slot's view keys, from its ids) are not declared to Redis,
//! which standalone Redis allows and Redis Cluster would not.

use std::sync::LazyLock;

use redis::Script;

/// Fenced writes of one commit. `KEYS[1]` is the slot's checkpoint, `KEYS[2..]` one key per
/// operation; `ARGV` holds the expected position and revision, the new ones, then the
/// operations (`set value`, `del`, `hset field value`, `hsetnx field value`, `hdel field`,
/// `hdelprefix prefix`). Answers `{"ok"}` or `{"fenced", position, revision}`.
pub(crate) static COMMIT: LazyLock<Script> = LazyLock::new(|| {
    Script::new(
        r"
local checkpoint = KEYS[1]
local position = redis.call('HGET', checkpoint, 'position') or '0'
local revision = redis.call('HGET', checkpoint, 'revision') or '0'
if position ~= ARGV[1] or revision ~= ARGV[2] then
  return {'fenced', position, revision}
end
local arity = {set = 1, del = 0, hset = 2, hsetnx = 2, hdel = 1, hdelprefix = 1}
local i, k = 5, 2
while i <= #ARGV do
  local n = arity[ARGV[i]]
  if n == nil or KEYS[k] == nil or i + n > #ARGV then
    return redis.error_reply('strata: malformed commit at argument ' .. i)
  end
  i, k = i + 1 + n, k + 1
end
i, k = 5, 2
while i <= #ARGV do
  local op, key = ARGV[i], KEYS[k]
  if op == 'set' then redis.call('SET', key, ARGV[i + 1])
  elseif op == 'del' then redis.call('DEL', key)
  elseif op == 'hset' then redis.call('HSET', key, ARGV[i + 1], ARGV[i + 2])
  elseif op == 'hdel' then redis.call('HDEL', key, ARGV[i + 1])
  elseif op == 'hsetnx' then redis.call('HSETNX', key, ARGV[i + 1], ARGV[i + 2])
  elseif op == 'hdelprefix' then
    local prefix = ARGV[i + 1]
    for _, field in ipairs(redis.call('HKEYS', key)) do
      if string.sub(field, 1, #prefix) == prefix then redis.call('HDEL', key, field) end
    end
  end
  i, k = i + 1 + arity[op], k + 1
end
redis.call('HSET', checkpoint, 'position', ARGV[3], 'revision', ARGV[4])
return {'ok'}
",
    )
});

/// Makes the live checkpoint if missing, recording `ARGV[1]` as the definition's version;
/// answers the version stored.
pub(crate) static PREPARE: LazyLock<Script> = LazyLock::new(|| {
    Script::new(
        r"
redis.call('HSETNX', KEYS[1], 'position', '0')
redis.call('HSETNX', KEYS[1], 'revision', '0')
redis.call('HSETNX', KEYS[1], 'version', ARGV[1])
return redis.call('HGET', KEYS[1], 'version')
",
    )
});

/// Empties a rebuild slot and records a rebuild begun. `KEYS`: the rebuild's checkpoint, its
/// view positions, then every other key of the slot to delete; `ARGV`: the slot's view-key
/// prefix, when it began, the definition's version. Answers `{"busy"}` while one runs, or
/// `{"ok", revision}`.
pub(crate) static BEGIN_REBUILD: LazyLock<Script> = LazyLock::new(|| {
    Script::new(
        r"
local checkpoint = KEYS[1]
if redis.call('HEXISTS', checkpoint, 'started_at') == 1
   and redis.call('HEXISTS', checkpoint, 'error') == 0 then
  return {'busy'}
end
for _, id in ipairs(redis.call('HKEYS', KEYS[2])) do redis.call('DEL', ARGV[1] .. id) end
for k = 2, #KEYS do redis.call('DEL', KEYS[k]) end
local revision = tostring(tonumber(redis.call('HGET', checkpoint, 'revision') or '0') + 1)
redis.call('HDEL', checkpoint, 'error')
redis.call('HSET', checkpoint, 'position', '0', 'revision', revision, 'started_at', ARGV[2],
  'version', ARGV[3])
return {'ok', revision}
",
    )
});

/// Marks a running rebuild failed. `KEYS[1]`: its checkpoint; `ARGV`: the expected position
/// and revision, the error. Answers `{"none"}`, `{"fenced", position, revision}` or `{"ok"}`.
pub(crate) static FAIL_REBUILD: LazyLock<Script> = LazyLock::new(|| {
    Script::new(
        r"
if redis.call('HEXISTS', KEYS[1], 'started_at') == 0
   or redis.call('HEXISTS', KEYS[1], 'error') == 1 then
  return {'none'}
end
local position = redis.call('HGET', KEYS[1], 'position') or '0'
local revision = redis.call('HGET', KEYS[1], 'revision') or '0'
if position ~= ARGV[1] or revision ~= ARGV[2] then
  return {'fenced', position, revision}
end
redis.call('HSET', KEYS[1], 'error', ARGV[3])
return {'ok'}
",
    )
});

/// Swaps a rebuild in. `KEYS`: the live checkpoint, the rebuild's, then pairs of (live key,
/// rebuild key), view positions first; `ARGV`: the rebuild's expected position and revision,
/// the live ones, the live and rebuild view-key prefixes, the live slot's new revision.
/// Answers `{"none"}`, `{"fenced", slot, position, revision}` or `{"ok"}`.
pub(crate) static FINISH_REBUILD: LazyLock<Script> = LazyLock::new(|| {
    Script::new(
        r"
local live, rebuild = KEYS[1], KEYS[2]
if redis.call('HEXISTS', rebuild, 'started_at') == 0
   or redis.call('HEXISTS', rebuild, 'error') == 1 then
  return {'none'}
end
local position = redis.call('HGET', rebuild, 'position') or '0'
local revision = redis.call('HGET', rebuild, 'revision') or '0'
if position ~= ARGV[1] or revision ~= ARGV[2] then
  return {'fenced', 'rebuild', position, revision}
end
position = redis.call('HGET', live, 'position') or '0'
revision = redis.call('HGET', live, 'revision') or '0'
if position ~= ARGV[3] or revision ~= ARGV[4] then
  return {'fenced', 'live', position, revision}
end
for _, id in ipairs(redis.call('HKEYS', KEYS[3])) do redis.call('DEL', ARGV[5] .. id) end
for _, id in ipairs(redis.call('HKEYS', KEYS[4])) do
  if redis.call('EXISTS', ARGV[6] .. id) == 1 then
    redis.call('RENAME', ARGV[6] .. id, ARGV[5] .. id)
  end
end
for k = 3, #KEYS, 2 do
  redis.call('DEL', KEYS[k])
  if redis.call('EXISTS', KEYS[k + 1]) == 1 then redis.call('RENAME', KEYS[k + 1], KEYS[k]) end
end
redis.call('HSET', live, 'position', ARGV[1], 'revision', ARGV[7],
  'version', redis.call('HGET', rebuild, 'version') or '0')
redis.call('DEL', rebuild)
return {'ok'}
",
    )
});
