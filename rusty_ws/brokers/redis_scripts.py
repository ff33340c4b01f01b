"""The Lua scripts of the history in Redis (``redis_history.RedisHistory``): publish and read.

What they store and why is in ``redis_history``'s docstring and docs/scaling.md; here is the
text Redis runs, with each script's KEYS, ARGV and reply, and ``history_scripts``, which writes a
node's settings into it (one script, and SHA, per configuration).
"""

from __future__ import annotations

__all__ = ["ENTRY_BYTES_SHARE", "UNBOUNDED", "history_scripts"]

#: An entry of the stream holds at most ``RUSTY_WS_HISTORY_MAX_BYTES`` / this many bytes of deliveries
#: (a longer run is stored as several entries), so that the byte bound, which drops whole entries,
#: keeps at least (this - 1) / this of it.
ENTRY_BYTES_SHARE = 8
#: ``max bytes`` for the script when nothing bounds a stream's bytes.
UNBOUNDED = 2 ** 53


# KEYS[1] the meta hash, KEYS[2] the stream; ARGV[1] an epoch to use if a new one is needed.
# load(run) returns the epoch and 1 if it was made over data no node wrote (logged by the caller),
# 2 if it was renewed because another master wrote the meta (a replica took over: see _GUARD),
# 3 if it was renewed because this Redis started after the meta was written (see the note on run ids below).
# A stream key of another type is found by the XADD or XRANGE that fails on it (pcall).
# {guard} is empty on one Redis; on a cluster it is _GUARD.
_PRELUDE = """
{guard}
local function incarnation(given)
  if given ~= '' then return given end
  return string.match(redis.call('INFO', 'server'), 'run_id:(%x+)') or ''
end
local function fresh(run)
  redis.call('DEL', KEYS[1], KEYS[2])
  redis.call('HSET', KEYS[1], 'e', ARGV[1], 'o', '0', 'i', run)
  if replid then redis.call('HSET', KEYS[1], 'r', replid()) end
  return ARGV[1]
end
local function load(run)
  local got = redis.pcall('HMGET', KEYS[1], 'e', 'o', 'r', 'b', 'i')
  if got['err'] then return fresh(run), 1, 0, 0 end  -- not a hash
  local e, o = got[1], got[2]
  if not e and not o then return fresh(run), 0, 0, 0 end
  if e and o and #e <= 64 and string.match(e, '^[0-9a-f]+$') and #o <= 15 and string.match(o, '^%d+$') then
    if replid then
      local mine = replid()
      if got[3] ~= mine then  -- written under another master: it may hold writes this one never got
        redis.call('HSET', KEYS[1], 'e', ARGV[1], 'r', mine, 'i', run)
        return ARGV[1], 2, tonumber(o), tonumber(got[4]) or 0
      end
    end
    if got[5] ~= run then  -- written before this Redis started: restored from its files, maybe older ones
      redis.call('HSET', KEYS[1], 'e', ARGV[1], 'i', run)
      return ARGV[1], 3, tonumber(o), tonumber(got[4]) or 0
    end
    return e, 0, tonumber(o), tonumber(got[4]) or 0
  end
  return fresh(run), 1, 0, 0
end
local function now_ms()
  local t = redis.call('TIME')
  return string.format('%d', tonumber(t[1]) * 1000 + math.floor(tonumber(t[2]) / 1000))
end
"""

# Run ids, on every Redis (one, or each master of a cluster): the meta remembers the ``run_id`` of the Redis
# process that wrote it (``i``; ``INFO server``, new at every start of redis-server). A Redis that
# starts again from its RDB or AOF file restores the meta as it was when the file was written: an
# older snapshot holds a lower top than the offsets clients have seen, which new publishes would
# hand out again with other messages. So a meta written by another run of Redis gets a new epoch
# (its offsets and entries stay: the file holds a consistent prefix), and clients positioned in the
# old epoch are told ``recovered: false``. A restart from files that lost nothing renews the epochs
# too: Redis cannot tell the two apart. The publish script is given the run_id by the node's sender,
# which reads it on each new connection (``redis_sender.RedisSender``), so a publish costs one more
# field read and one comparison; a script given '' (a read, a redirected publish) asks INFO itself.

# On a Redis Cluster (SPUBLISH): the meta remembers the replication id of the master that wrote it
# (``r``). A replica promoted after its master died has a new replication id and may lack the last
# writes its master acknowledged (replication is asynchronous): an offset it hands out again could
# name another message than the one a client saw. So a stream first touched by a new master gets a
# new epoch (its offsets and entries stay: what this master holds is a consistent prefix), and
# clients positioned in the old epoch are told ``recovered: false``, never a silent gap.
_GUARD = """
local function replid()
  return string.match(redis.call('INFO', 'replication'), 'master_replid:(%x+)') or ''
end
"""


def history_scripts(publish_command: str, *, size: int, ttl_ms: int, meta_ttl_ms: int, window_ms: int,
             max_bytes: int) -> tuple[str, str]:
    """The publish and read scripts for ``PUBLISH`` (one Redis) or ``SPUBLISH`` (a cluster), the
    publish script with the node's settings written in (integers: nothing else reaches the Lua)."""
    if publish_command not in ("PUBLISH", "SPUBLISH"):
        raise ValueError(f"no publish command: {publish_command!r}")
    settings = {"size": size, "ttl_ms": ttl_ms, "meta_ttl_ms": meta_ttl_ms, "window_ms": window_ms, "max_bytes": max_bytes}
    if not all(type(value) is int and 0 < value <= UNBOUNDED for value in settings.values()):
        raise ValueError(f"history settings out of range: {settings}")
    settings["chunk"] = max(1, max_bytes // ENTRY_BYTES_SHARE)  # the most bytes of deliveries in one entry
    body = _PUBLISH_BODY.replace("{publish}", publish_command)
    for name, value in settings.items():
        body = body.replace("{" + name + "}", str(value))
    prelude = _PRELUDE.replace("{guard}", _GUARD if publish_command == "SPUBLISH" else "local replid = nil")
    return prelude + body, prelude + _READ_BODY


#: KEYS: meta, stream, then the publish id keys of those publishes that have one.
#: ARGV: epoch if new, channel, node id, the run_id of the Redis it runs on ('': the script asks
#: INFO), n; then for each of the n publishes, oldest first: its id key's index in KEYS (0: no id),
#: delivery, the node's number. The node's settings (size, ttl ms,
#: meta ttl ms, window ms, max bytes) are written into the script itself (``publish_script``): one
#: script, and SHA, per configuration, so a publish carries only its own arguments.
#: The joined form, for a merged run whose publishes have no id (``redis_history.merge_publishes``):
#: n is minus the run's length k, ARGV[6] the JSON array of its k deliveries (the envelope's
#: ``deliveries`` and, when the run is one entry, that entry's ``d``: no copy, no loop), ARGV[7]
#: the node's numbers joined by commas; and, when the run is cut into entries (more than size, or
#: more than max bytes / 8 bytes), three per entry, oldest first: its last place among the k, the
#: first and last byte of its deliveries in ARGV[6] (the cut the loop over the per-publish form makes).
#: Returns {reset (0 to 3: see load()), the epoch, the offset of the first new publish (0: none),
#: then for each repeat: its place among the n (1 for the first) and the position its id was first
#: given ("{offset}:{epoch}", a string)}: the new ones' offsets follow each other from the first.
#: Publishes the new ones (not the repeats) as one version-5 envelope, if any.
#:
#: The run's new publishes are one stream entry (see the module's docstring for the format): its
#: id is the run's last offset, its ``d`` the delivery alone (a run of one) or the JSON array of
#: the run's deliveries. Only the run's newest ``size`` are stored, and a run of more than
#: ``max bytes`` / 8 bytes is cut into several entries (so that the byte bound, which drops whole
#: entries, keeps at least 7/8 of it). The count bound drops the entries wholly below the floor
#: ``top - size + 1`` (``XADD MINID``): an entry across the floor stays whole; the read script
#: (``_READ_BODY``) returns it whole too, and ``RedisHistory.read`` drops what it holds below the floor.
#: The byte bound: the meta's ``b`` is an upper bound of the stream's bytes (what was added since
#: the last exact count); only when it passes ``max bytes`` are the entries counted (XREVRANGE) and
#: the oldest that do not fit dropped (XTRIM MINID), and ``b`` made exact.
#: The meta outlives the entries (``meta ttl``): a pair idle past the TTL keeps its epoch and top.
_PUBLISH_BODY = """
local run = incarnation(ARGV[4])
local epoch, reset, top, b = load(run)
local ms = now_ms()
local n = tonumber(ARGV[5])
local size, most, chunk = {size}, {max_bytes}, {chunk}
local results = {reset, epoch, 0}
local datas, seqs = {}, {}
local ids, given, repeats = nil, nil, nil  -- made only for publishes with an id (tables cost a run of one)
local added = 0
local joined, cuts = nil, nil  -- the joined form (n < 0): the run's deliveries as one array, its entries' cuts
if n < 0 then
  added, n, joined = -n, 0, ARGV[6]
  if #ARGV > 7 then cuts = 8 end
end
for i = 1, n do
  local at = 3 + 3 * i
  local id = tonumber(ARGV[at])
  local seen = false
  if id > 0 then
    given = given or {}  -- id key -> the new publish of this run that has it
    seen = given[KEYS[id]] or redis.call('GET', KEYS[id])
  end
  if seen then  -- place, then the position first given (a string) or the new one it repeats (a number)
    repeats = repeats or {}
    repeats[#repeats + 1] = i
    repeats[#repeats + 1] = seen
  else
    added = added + 1
    datas[added], seqs[added] = ARGV[at + 1], ARGV[at + 2]
    if id > 0 then
      ids = ids or {}
      ids[added] = id
      given[KEYS[id]] = added
    end
  end
end
-- The run's new publishes after offset top, in entries (the newest size, at most chunk bytes each).
-- Only the first XADD can fail (an entry no node wrote sits past our top, or the key is no stream):
-- then the pair starts again under a new epoch, and the run is stored once more from offset 1.
local bytes, whole = 0, nil  -- whole: the entry's d when it holds the whole run (the envelope's deliveries too)
-- One entry, id offset-0; with MINID once entries below floor are to go (the pair's newest size kept).
local function xadd(floor, offset, d)
  if floor > 1 then
    return redis.pcall('XADD', KEYS[2], 'MINID', floor, offset .. '-0', 'd', d, 't', ms)
  end
  return redis.pcall('XADD', KEYS[2], offset .. '-0', 'd', d, 't', ms)
end
for attempt = 1, 2 do
  local failed = nil
  local floor = top + added - size + 1
  local i = 1
  if added > size then i = added - size + 1 end
  if joined and not cuts then  -- one entry, the whole run: the argument itself
    i = added + 1
    local ok = xadd(floor, top + added, joined)
    if type(ok) == 'table' and ok['err'] then failed = ok else bytes = #joined end
  end
  local cut = cuts
  while i <= added do
    local j, length, d
    if cut then  -- the node's cut (ARGV: last place, from, to in the joined array), as the loop below cuts
      j = tonumber(ARGV[cut])
      d = string.sub(joined, tonumber(ARGV[cut + 1]), tonumber(ARGV[cut + 2]))
      if j > i then d = '[' .. d .. ']' end
      cut = cut + 3
    else
      j, length = i, #datas[i]
      while j < added and length + 1 + #datas[j + 1] <= chunk do
        j = j + 1
        length = length + 1 + #datas[j]
      end
      d = datas[i]
      if j > i then
        d = '[' .. table.concat(datas, ',', i, j) .. ']'
        if i == 1 and j == added then whole = d end
      end
    end
    local ok = xadd(floor, top + j, d)
    if type(ok) == 'table' and ok['err'] then
      failed = ok
      break
    end
    bytes = bytes + #d
    i = j + 1
  end
  if added == 0 or not failed then break end
  if attempt == 2 then return redis.error_reply(failed['err']) end
  epoch, reset = fresh(run), 1
  results[1], results[2] = 1, epoch
  top, b, bytes, whole = 0, 0, 0, nil
end
if added > 0 then results[3] = top + 1 end
if ids then
  for k = 1, added do
    if ids[k] then redis.call('SET', KEYS[ids[k]], (top + k) .. ':' .. epoch, 'PX', {window_ms}) end
  end
end
if repeats then
  for j = 1, #repeats, 2 do
    local seen = repeats[j + 1]
    if type(seen) == 'number' then seen = (top + seen) .. ':' .. epoch end
    results[#results + 1] = repeats[j]
    results[#results + 1] = seen
  end
end
if added == 0 then  -- repeats only
  redis.call('PEXPIRE', KEYS[1], {meta_ttl_ms})
  return results
end
local first = top + 1
top = top + added
b = b + bytes
if b > most then  -- maybe past the bound: count the entries, newest first, and drop the oldest that do not fit
  local kept, cut = 0, nil
  for _, entry in ipairs(redis.call('XREVRANGE', KEYS[2], '+', '-')) do
    local fields, length = entry[2], 0
    for j = 1, #fields - 1, 2 do
      if fields[j] == 'd' then length = #fields[j + 1] end
    end
    if kept + length > most then
      cut = entry[1]
      break
    end
    kept = kept + length
  end
  if cut then
    local after = tonumber(string.match(cut, '^(%d+)')) + 1
    redis.call('XTRIM', KEYS[2], 'MINID', after .. '-0')
  end
  b = kept
end
redis.call('HSET', KEYS[1], 'o', top, 'b', b)
redis.call('PEXPIRE', KEYS[1], {meta_ttl_ms})
redis.call('PEXPIRE', KEYS[2], {ttl_ms})
redis.call('{publish}', ARGV[2], '{"v":5,"node":"' .. ARGV[3] .. '","epoch":"' .. epoch .. '","first":' .. first
           .. ',"seqs":[' .. (joined and ARGV[7] or table.concat(seqs, ',')) .. '],"deliveries":'
           .. (joined or whole or ('[' .. table.concat(datas, ',') .. ']'))
           .. '}')
return results
"""

#: KEYS: meta, stream. ARGV: epoch if new, meta ttl ms, "since" | "last", since's epoch, since's offset,
#: count, size (``RUSTY_WS_HISTORY_SIZE``), the run_id of the Redis it runs on ('': the script asks
#: INFO: a read goes through any connection of the client's pool, whose Redis may have restarted
#: since the node last learnt its run_id).
#: Returns {epoch, top, now ms, reset, entries}: the entries that hold the offsets after
#: ``low = max(top - size, since's offset | top - count)`` up to ``low + count`` (none for a since
#: in another epoch), oldest first; the first and the last may hold offsets outside of that, which
#: the caller drops (``RedisHistory.read``).
_READ_BODY = """
local run = incarnation(ARGV[8])
local epoch, reset, top = load(run)
redis.call('PEXPIRE', KEYS[1], ARGV[2])
local count = tonumber(ARGV[6])
local low = nil
if ARGV[3] == 'last' then
  low = math.max(0, top - tonumber(ARGV[7]), top - count)
elseif ARGV[4] == epoch then
  low = math.max(0, top - tonumber(ARGV[7]), tonumber(ARGV[5]))
end
local entries = {}
if low and low < top then
  local high = math.min(top, low + count)
  entries = redis.pcall('XRANGE', KEYS[2], '(' .. low .. '-0', high)
  if not entries['err'] then
    local last = entries[#entries]
    if not last or tonumber(string.match(last[1], '^(%d+)')) < high then  -- the entry that holds high
      local more = redis.pcall('XRANGE', KEYS[2], high + 1, '+', 'COUNT', 1)
      if more['err'] then entries = more elseif more[1] then entries[#entries + 1] = more[1] end
    end
  end
elseif low then
  local length = redis.pcall('XLEN', KEYS[2])  -- nothing to read: only whether the key is a stream
  if type(length) == 'table' and length['err'] then entries = length end
end
if entries['err'] then  -- the stream's key holds something else
  epoch, reset = fresh(run), 1
  redis.call('PEXPIRE', KEYS[1], ARGV[2])
  entries = {}
end
return {epoch, redis.call('HGET', KEYS[1], 'o'), now_ms(), reset, entries}
"""
