"""The outbox's Lua scripts (:mod:`stem_observe.notify.outbox`), each one atomic step on
a receiver's stream and its group's keys."""

from __future__ import annotations

__all__ = ["DELIVERED", "DONE", "ENQUEUE", "FORGET", "HAND_BACK", "KEEP", "LEASE", "MAY_SEND",
           "RELEASE"]

# KEYS: stream, version, last queued, done. ARGV: max length, ttl ms, expected version, log
# entry, then the stream entry's field/value pairs (its version is appended). The current
# version is the higher of the version and done keys (see ``last_queued``).
ENQUEUE = """
if redis.call('XLEN', KEYS[1]) >= tonumber(ARGV[1]) then return -1 end
local version = math.max(tonumber(redis.call('GET', KEYS[2]) or '0'),
                         tonumber(redis.call('GET', KEYS[4]) or '0'))
if version ~= tonumber(ARGV[3]) then return 0 end
version = version + 1
redis.call('SET', KEYS[2], version, 'PX', ARGV[2])
redis.call('SET', KEYS[3], ARGV[4], 'PX', ARGV[2])
local fields = {}
for i = 5, #ARGV do fields[#fields + 1] = ARGV[i] end
fields[#fields + 1] = 'version'
fields[#fields + 1] = version
redis.call('XADD', KEYS[1], '*', unpack(fields))
return 1
"""
# KEYS: stream, done. ARGV: group, consumer, id, version. 1 send, 0 not ours, -1 superseded,
# 2 lost: neither pending nor in the stream any more (Redis restarted without persistence).
MAY_SEND = """
local p = redis.pcall('XPENDING', KEYS[1], ARGV[1], ARGV[3], ARGV[3], 1)
if type(p) == 'table' and p[1] then
  if p[1][2] ~= ARGV[2] then return 0 end
  if tonumber(redis.call('GET', KEYS[2]) or '0') >= tonumber(ARGV[4]) then return -1 end
  return 1
end
if redis.call('XRANGE', KEYS[1], ARGV[3], ARGV[3])[1] then return 0 end
return 2
"""
# KEYS: done. ARGV: version, ttl ms. Raise the delivered version (never lower it); for
# recording a delivery by hand (``finish`` uses ``_DELIVERED``).
DONE = """
if tonumber(redis.call('GET', KEYS[1]) or '0') < tonumber(ARGV[1]) then
  redis.call('SET', KEYS[1], ARGV[1], 'PX', ARGV[2]) end
return 1
"""
# KEYS: done, stream. ARGV: version, ttl ms, group, id. Raise the delivered version if the
# entry is still pending in the stream (by anyone): a stream and group created again after
# Redis lost them count versions anew, and an older entry's version must not enter that.
DELIVERED = """
local p = redis.pcall('XPENDING', KEYS[2], ARGV[3], ARGV[4], ARGV[4], 1)
if type(p) ~= 'table' or p.err or not p[1] then return 0 end
if tonumber(redis.call('GET', KEYS[1]) or '0') < tonumber(ARGV[1]) then
  redis.call('SET', KEYS[1], ARGV[1], 'PX', ARGV[2]) end
return 1
"""
# KEYS: last queued. ARGV: the log entry queued. Forget it unless a newer one replaced it.
FORGET = """
if redis.call('GET', KEYS[1]) == ARGV[1] then redis.call('DEL', KEYS[1]) end
return 1
"""
# Take the lease if free or keep it if held; 1 when held by ARGV[1].
LEASE = """
if redis.call('SET', KEYS[1], ARGV[1], 'NX', 'PX', ARGV[2]) then return 1 end
if redis.call('GET', KEYS[1]) == ARGV[1] then
  redis.call('PEXPIRE', KEYS[1], ARGV[2]) return 1 end
return 0
"""
RELEASE = """
if redis.call('GET', KEYS[1]) == ARGV[1] then return redis.call('DEL', KEYS[1]) end
return 0
"""
# Reset the idle time of the entries this consumer still holds. ARGV: group, consumer, ids.
KEEP = """
local kept = 0
for i = 3, #ARGV do
  local p = redis.call('XPENDING', KEYS[1], ARGV[1], ARGV[i], ARGV[i], 1)
  if p[1] and p[1][2] == ARGV[2] then
    redis.call('XCLAIM', KEYS[1], ARGV[1], ARGV[2], 0, ARGV[i], 'JUSTID')
    kept = kept + 1
  end
end
return kept
"""
# Hand entries back: for each id this consumer holds, re-add its fields at the end of the
# stream and acknowledge and delete the old one. ARGV: group, consumer, ids (in order).
HAND_BACK = """
local moved = 0
for i = 3, #ARGV do
  local p = redis.call('XPENDING', KEYS[1], ARGV[1], ARGV[i], ARGV[i], 1)
  if p[1] and p[1][2] == ARGV[2] then
    local e = redis.call('XRANGE', KEYS[1], ARGV[i], ARGV[i])
    if e[1] then redis.call('XADD', KEYS[1], '*', unpack(e[1][2])) moved = moved + 1 end
    redis.call('XACK', KEYS[1], ARGV[1], ARGV[i])
    redis.call('XDEL', KEYS[1], ARGV[i])
  end
end
return moved
"""
