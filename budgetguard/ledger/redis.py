"""The Redis ledger: one ledger shared by every process on every host.

URLs are redis-py's::

    redis://[[user]:[password]@]host[:port][/db]
    rediss://...                       TLS
    unix:///path/to/redis.sock?db=0

plus options of the ledger's own, as query parameters or keyword arguments:
``prefix`` (a namespace, so that several ledgers share one Redis database),
``idempotency_ttl`` (seconds for which settled and released reservation ids
and add op ids are remembered, so a retry counts once; default 3600, at least
60; ``ended_ttl`` is its older name) and ``timeout`` (the deadline of one
operation in seconds, default 5) and ``settle_delay`` (below; default 0).
Every other query parameter (``ssl_cert_reqs``, ...) goes to redis-py.

Settles that ride along (``settle_delay`` > 0, at most 1 s): ``settle`` and
``asettle`` queue the settle in this process and return; it is sent in the
same round trip as the next command of any thread (usually the next call's
reserve: one round trip per call instead of two), or by a daemon thread once
it has waited ``settle_delay`` seconds. The rules:

- A queued settle is idempotent by its reservation id: a round trip that
  carried it and lost its reply leaves it queued, and it is sent again with
  the same id (the script ignores a settled id), so it never charges twice.
- Its hold stays in Redis until it lands: other processes admit against the
  hold, never against room the settle has not yet made.
- Reads of this process (``balances``, ``scan``, ``open_reservations``,
  budget reads) carry every queued settle, in flight ones included, before
  the read in the same round trip: the process reads its own writes.
  ``close()`` and interpreter exit write the queue (settles after that are
  written at once); ``release`` and every other write carry it too, in order.
- A crash loses the settles still queued: those of the last
  ``settle_delay`` seconds, plus any whose write was failing. Their holds
  expire after the reservation's time to live, uncharged.
- A forked child starts with an empty queue: the parent's queue is the
  parent's to send.
- ``settle`` returns ``True`` once queued, ``False`` when the same id is
  still queued or was written from this process's queue recently (the last
  10,000); an id ended by another process is known only to Redis.
- A batch that fails stays queued (at most 10,000 settles), carried by every
  later command and retried by the daemon thread (backing off to once a
  second); until a batch lands, new settles are written at once, so their
  failures reach the caller (the guard's outbox) as without the option.

Faults: the ledger drives redis-py's connections itself, one per thread (and
a few per event loop), and never lets redis-py retry a command: a script
whose reply was lost may have run, so it is a ``StorageError``, and the
caller repeats the write with the same id, which every script ignores the
second time. A connection whose command was cut short (an interrupt, a
cancellation, a timeout) is marked and reconnected before its next use, so
a late reply can never be read as the answer to another command. A reserve
whose reply was lost is released at once (best effort; else it expires), and
a release marks its id used even if the reserve has not arrived yet.

Layout: every key of one ledger carries the same hash tag, ``{bg}`` or
``{bg:<prefix>}``, so all of them live in one Redis Cluster slot and every
operation can be one Lua script over several budgets (a call usually holds a
user's budget and the global one at once). The price is that one ledger
namespace is served by one shard; use several prefixes to spread tenants.

================================  ==========================================
``{bg}:spent``                    hash: key -> units spent
``{bg}:tallies``                  hash: JSON list of keys -> units spent on
                                  each of them, not yet in ``spent``
``{bg}:reserved``                 hash: key -> units held by open reservations
                                  (a field that drops to 0 stays until ``clear``)
``{bg}:open``                     sorted set: reservation id, score = expiry
``{bg}:holds``                    hash: reservation id -> JSON holds
``{bg}:settled``, ``{bg}:released``  sorted sets: ended ids, score = end time
``{bg}:added``                    sorted set: op ids of ``add``, score = time
``{bg}:budgets``                  hash: budget name -> JSON definition, and the
                                  fields ``\0mark``, ``\0version``, ``\0floor``
``{bg}:budget_index``             sorted set: name -> version of its last change
``{bg}:budget_deleted``           sorted set: deleted name -> when (kept a day)
================================  ==========================================

The mark (a random id) lives in the same hash as the definitions, so whatever
takes them (eviction, ``FLUSHALL``, a restart without persistence) takes it
too: a reader that saw a mark and finds none, or another, knows the ledger
lost its data. Idempotency sets are trimmed by at most 100 ids per call (the
settled ids by one reserve in about ten, which still keeps up: each call
settles once).

Tallies that ride in groups: a guarded call's settle adds its amount to two
budgets and to seven report tallies (lifetime, per model, per day; see
``budgetguard/_keys.py``). The tallies whose keys start with ``t|`` or ``d|``
or hold ``|m=`` (``_deferred``) are added with one command for the group,
to the ``tallies`` field named by the JSON list of their keys; every read of
such a key (``balances``, ``scan``, ``clear``, and a reserve that checks one,
which no guard's budget does) first adds the waiting groups to ``spent`` and
deletes them, in the same script, so reads see exactly what per-key adds
would have given. Data written before this layout (every tally its own
field) needs no migration: it is read as it is, and the groups add to it.
Processes of a budgetguard older than this layout read such tallies (never
a budget) without the groups that wait: upgrade every process that reads
reports.

Units are integers: Redis adds them with ``HINCRBY`` (exact 64-bit) and the
scripts compare them as Lua doubles, exact up to 2**53 units (nine million
dollars at a nano-dollar per unit). ``INCRBYFLOAT`` is never used.

Time comes from the server: without ``clock=`` the scripts read ``TIME``, and
a reservation's expiry is sent as its time to live (measured on the client's
clock, so a client's skew does not matter), so hosts whose clocks disagree
never expire each other's holds early. With an explicit ``clock=`` (tests
that move time) its time is passed to the scripts instead. Without
``clock=``, ``clock()`` itself is the server's time, read as this host's
clock plus the offset ``sync_clock()`` measured with ``TIME``; a guard
measures it when built and about every minute, and cuts its windows (daily,
monthly keys) by it, so a skewed host charges the same window as the others.
Expired reservations are released lazily, at most ``expire_batch`` per
script call, by reads and by a reserve whose holds do not all fit (a reserve
that fits needs no expiry first: expired holds only take room); reads that
must see every expiry call again until none is left.
"""

from __future__ import annotations

import asyncio
import atexit
import hashlib
import itertools
import json
import logging
import os
import re
import threading
import time
import uuid
import weakref
from collections.abc import Callable, Mapping, Sequence
from contextlib import suppress
from typing import Any, NamedTuple, TypeVar
from urllib.parse import parse_qsl, urlencode, urlsplit, urlunsplit

from .. import _keys
from .._dist import install_hint
from ..errors import ConfigurationError, StorageError
from .base import (
    TOMBSTONE_SECONDS,
    Balance,
    BudgetChanges,
    Hold,
    Ledger,
    Refusal,
    Reservation,
    budget_from_json,
    budget_to_json,
    check_idempotency_ttl,
    check_op_id,
    check_reservation,
    check_settle_amount,
    check_units,
    shielded,
    shielded_reserve,
)

__all__ = ["RedisLedger"]

logger = logging.getLogger("budgetguard")
T = TypeVar("T")

_DEFAULT_SOCKET_TIMEOUT = 5.0
#: The longest settle_delay: a crash loses at most this much of settles.
_MAX_SETTLE_DELAY = 1.0
#: Settles queued at most; past it, or while a batch fails, settles are written at once.
_MAX_QUEUED = 10_000
#: Ids of settles written from the queue that a repeat in this process is told of (False).
_REMEMBERED = 10_000
# Lua numbers are doubles: whole numbers are exact up to 2**53.
_MAX_UNITS = 2**53
#: Tally tuples whose split (deferred group, keys added at once) a ledger keeps.
_GROUPS_KEPT = 1024

# Shared by every script; KEYS are always the same seven, in this order, so that
# every key a script touches is declared (Redis Cluster requires it).
_PRELUDE = """
local spent_key, reserved_key, open_key = KEYS[1], KEYS[2], KEYS[3]
local holds_key, settled_key, released_key = KEYS[4], KEYS[5], KEYS[6]
local tallies_key = KEYS[7]

-- The time of an operation: the server's clock (TIME) when the client sends
-- '', else the client's (a ledger built with an explicit clock, in tests).
-- A string, so that redis.call gets it exactly (Lua numbers become 14 digits).
-- Numbers reach redis.call as strings throughout these scripts: a Lua number
-- is formatted by sprintf, and tonumber() parses twice; arithmetic on a
-- string parses it once.
local function now_of(arg)
  if arg == '' then
    local t = redis.call('TIME')
    return t[1] .. '.' .. string.sub('00000' .. t[2], -6)
  end
  return arg
end

-- Forget up to 100 members of an idempotency set older than `cutoff`:
-- bounded work per call, which keeps up since each call adds at most one.
local function forget_before(key, cutoff)
  local old = redis.call('ZRANGEBYSCORE', key, '-inf', '(' .. string.format('%.17g', cutoff),
    'LIMIT', '0', '100')
  if #old > 0 then redis.call('ZREM', key, unpack(old)) end
end

-- Drop the holds of an open reservation; false if it is not open.
local function unhold(id)
  local holds = redis.call('HGET', holds_key, id)
  if not holds then return false end
  redis.call('HDEL', holds_key, id)
  redis.call('ZREM', open_key, id)
  -- A field that drops to 0 stays (the next hold on the key reuses it; clear
  -- drops it): deleting it would cost a command per settle. Below 0 (its hash
  -- was lost under the hold) it goes, so a lost hash never grants room.
  local below = {}
  for _, hold in ipairs(cjson.decode(holds)) do
    -- amounts travel as strings: HINCRBY parses them as exact integers
    if hold[3] ~= '0' then
      local left = redis.call('HINCRBY', reserved_key, hold[1], '-' .. hold[3])
      if left < 0 then below[#below + 1] = hold[1] end
    end
  end
  if #below > 0 then redis.call('HDEL', reserved_key, unpack(below)) end
  return true
end

-- Release up to `batch` expired reservations; 1 if more may be waiting, and
-- how many it released. When none is due this is one command.
local function expire(now, batch, ttl)
  local due = redis.call('ZRANGEBYSCORE', open_key, '-inf', now, 'LIMIT', '0', batch)
  if ttl and #due > 0 then forget_before(released_key, now - ttl) end
  for _, id in ipairs(due) do
    unhold(id)
    redis.call('ZADD', released_key, now, id)
  end
  if #due >= tonumber(batch) then return 1, #due end
  return 0, #due
end

-- Add to their keys up to `batch` groups of tallies that settles left in the
-- tallies hash (field: the JSON list of a settle's tally keys, value: units
-- not yet added to each of them), and forget them; 1 if more may be waiting.
-- Every read of a key a settle defers (see _deferred in Python) calls this
-- first, until it returns 0. A group is deleted in the step that adds it, so
-- it is added once; HSCAN from 0 again on every call, since the fields it
-- returned are gone.
local function fold(batch)
  local cursor, folded = '0', 0
  repeat
    local page = redis.call('HSCAN', tallies_key, cursor, 'COUNT', batch)
    cursor = page[1]
    local items, done = page[2], {}
    for j = 1, #items, 2 do
      local group = items[j]
      if not done[group] then
        done[group] = true
        done[#done + 1] = group
        for _, key in ipairs(cjson.decode(group)) do
          redis.call('HINCRBY', spent_key, key, items[j + 1])
        end
      end
    end
    if #done > 0 then redis.call('HDEL', tallies_key, unpack(done)) end
    folded = folded + #done
  until cursor == '0' or folded >= tonumber(batch)
  if cursor == '0' then return 0 end
  return 1
end

-- Settle `id` and drop its holds; 0 if it was settled before. ARGV[first ..
-- last] says what it charges: the number of charged holds, their (key,
-- amount) pairs, then the tallies' amount (a guarded call has several
-- tallies, all of one amount: it is sent once), the JSON list of the tally
-- keys that are added later (one HINCRBY for the whole group, see fold) or
-- '', and the tally keys added now. The id is marked and checked in one step
-- (ZADD NX). An id also in the released set (its hold expired or was
-- released first) stays there: every check asks both sets. Old settled ids
-- are forgotten by reserve (each call settles at most once; up to 100 on one
-- reserve in ten), old released ones by release and by expire (the two that
-- add them).
local function settle(id, now, first, last)
  if redis.call('ZADD', settled_key, 'NX', now, id) == 0 then return 0 end
  unhold(id)
  local tally = first + 1 + 2 * ARGV[first]
  for i = first + 1, tally - 1, 2 do
    if ARGV[i + 1] ~= '0' then redis.call('HINCRBY', spent_key, ARGV[i], ARGV[i + 1]) end
  end
  local units = ARGV[tally]
  if units ~= '0' then
    local group = ARGV[tally + 1]
    if group ~= '' then redis.call('HINCRBY', tallies_key, group, units) end
    for i = tally + 2, last do redis.call('HINCRBY', spent_key, ARGV[i], units) end
  end
  return 1
end

-- Release `id`; 0 if it was not open. Never reserved (or ended): mark the id
-- used, so that a reserve arriving late (its caller gave up, or its reply was
-- lost) holds nothing.
local function release(id, now, ttl)
  forget_before(released_key, now - ttl)
  if not unhold(id) then
    if not redis.call('ZSCORE', settled_key, id) then
      redis.call('ZADD', released_key, 'NX', now, id)
    end
    return 0
  end
  redis.call('ZADD', released_key, now, id)
  return 1
end
"""

# ARGV: id, now ('' for the server's clock), expires_at (with the server's
# clock: seconds from now), batch, idempotency_ttl, holds_json: the rows
# [key, limit or null, amount] (amounts as strings), followed by
# [unit, over or null, prior or null, weight] when any is set; then '1' when a
# key the checks read is one a settle defers (see fold), else nothing. A reply
# {1, 0, '0', '0', 1, 0} asks the caller to call again (more to fold). The
# holds are sent once, as the JSON the open reservation keeps (decoding it
# here costs Redis less than a dozen more arguments, and the client less to
# build).
_RESERVE = (
    _PRELUDE
    + """
local id = ARGV[1]
-- Checked before any write: a script that fails half way keeps its writes.
local expiry = tonumber(ARGV[3])
if not expiry or expiry ~= expiry or expiry == math.huge or expiry == -math.huge then
  return redis.error_reply('budgetguard: reservation expiry must be a finite number')
end
local now = now_of(ARGV[2])
if ARGV[2] == '' then expiry = now + expiry end
-- An open id is caught when it is added to the open set (ZADD NX), below.
if redis.call('ZSCORE', settled_key, id) or redis.call('ZSCORE', released_key, id) then
  return {-1}
end
local batch, ttl = ARGV[4], ARGV[5]
-- ARGV[7]: a key the checks read may have tallies waiting (rare: the keys
-- settles defer are reports' counters, not budgets). Add them first.
if ARGV[7] and fold(batch) == 1 then return {1, 0, '0', '0', 1, 0} end
-- Forget old settled ids, up to 100: on the server's clock on about one
-- reserve in ten (whose microseconds end in 0), still ten times what settles
-- add; on a clock of the caller's (tests that move time) on every reserve.
if ARGV[2] ~= '' or string.byte(now, -1) == 48 then forget_before(settled_key, now - ttl) end
local rows = cjson.decode(ARGV[6])
local n = #rows
-- JSON null (cjson.null) and a row without the optional part both read as nil.
local function given(value)
  if value == cjson.null then return nil end
  return value
end
-- Read every counter the checks need in two commands: the held keys with a
-- limit, and the prior keys of sliding windows.
local wanted, slot = {}, {}
for i = 0, n - 1 do
  local row = rows[i + 1]
  if given(row[2]) then
    wanted[#wanted + 1] = row[1]
    slot[i] = #wanted
    if given(row[6]) then wanted[#wanted + 1] = row[6] end
  end
end
-- Check every hold before changing anything: a refusal changes nothing.
-- Returns the refusal, or nil and the over keys of soft holds that did not fit.
local function check()
  local spents, reserveds = {}, {}
  if #wanted > 0 then
    spents = redis.call('HMGET', spent_key, unpack(wanted))
    reserveds = redis.call('HMGET', reserved_key, unpack(wanted))
  end
  local missed = {}
  for i = 0, n - 1 do
    local row = rows[i + 1]
    local limit = given(row[2])
    if limit then
      local s = slot[i]
      local spent = spents[s] or '0'
      local reserved = reserveds[s] or '0'
      local part = 0
      if given(row[6]) then
        -- floor(prior * weight / 10^6), exact: the prior's decimal digits split
        -- in two, so no product leaves the integers a double holds exactly.
        local prior = spents[s + 1] or '0'
        local weight = tonumber(row[7])
        local high = tonumber(string.sub(prior, 1, -7)) or 0
        local low = tonumber(string.sub(prior, -6))
        part = high * weight + math.floor(low * weight / 1000000)
      end
      local used = spent + reserved + part
      local amount, cap = row[3] + 0, limit + 0
      if used + amount > cap or (amount == 0 and used >= cap) then
        local over = given(row[5])
        if not over then return {1, i, spent, reserved, 0, part}, missed end
        missed[#missed + 1] = over
      end
    end
  end
  return nil, missed
end
local refusal, missed = check()
if refusal or #missed > 0 then
  -- Something did not fit: release expired reservations and, if any were,
  -- check again. Holds that fit need no expiry first (expired holds only take
  -- room), so a call that fits pays no command for it; reads release them too.
  -- An open id is caught first: expiry could release it, and ZADD NX then pass.
  if redis.call('HEXISTS', holds_key, id) == 1 then return {-1} end
  local more, released = expire(now, batch, ttl)
  if released > 0 then refusal, missed = check() end
  if refusal then
    refusal[5] = more
    return refusal
  end
end
if redis.call('ZADD', open_key, 'NX', string.format('%.17g', expiry), id) == 0 then
  return {-1}
end
for _, row in ipairs(rows) do
  if row[3] ~= '0' then redis.call('HINCRBY', reserved_key, row[1], row[3]) end
end
for _, over in ipairs(missed) do redis.call('HINCRBY', spent_key, over, 1) end
redis.call('HSET', holds_key, id, ARGV[6])
return {0}
"""
)

# ARGV: id, now, then what it charges (see settle() above).
_SETTLE = (
    _PRELUDE
    + """
return settle(ARGV[1], now_of(ARGV[2]), 3, #ARGV)
"""
)

# ARGV: id, now, idempotency_ttl.
_RELEASE = (
    _PRELUDE
    + """
return release(ARGV[1], now_of(ARGV[2]), tonumber(ARGV[3]))
"""
)

# Settles queued in the client (settle_delay), in their order. ARGV: now,
# then per settle: id, the number of ARGV that follow (what it charges, as
# for _SETTLE).
# Returns one 0/1 per settle.
_END = (
    _PRELUDE
    + """
local now = now_of(ARGV[1])
local result = {}
local at = 2
while at <= #ARGV do
  local id, count = ARGV[at], tonumber(ARGV[at + 1])
  result[#result + 1] = settle(id, now, at + 2, at + 1 + count)
  at = at + 2 + count
end
return result
"""
)

# KEYS: spent, added. ARGV: amount, op id or '', now, idempotency_ttl, then every key to charge.
_ADD = (
    _PRELUDE
    + """
local amount, op = ARGV[1], ARGV[2]
if op ~= '' then
  local now = now_of(ARGV[3])
  forget_before(KEYS[2], now - tonumber(ARGV[4]))
  if redis.call('ZADD', KEYS[2], 'NX', now, op) == 0 then return 0 end
end
for i = 5, #ARGV do redis.call('HINCRBY', KEYS[1], ARGV[i], amount) end
return 1
"""
)

# ARGV: batch, '1' if a key is one a settle defers, then keys. Forget their
# spend, and drop their reserved fields that hold nothing (a settle leaves a
# field at 0 rather than pay a command to delete it). Returns 1 when it must
# be called again (tallies still to fold; nothing was cleared yet).
_CLEAR = (
    _PRELUDE
    + """
if ARGV[2] == '1' and fold(ARGV[1]) == 1 then return 1 end
for first = 3, #ARGV, 1000 do
  local keys = {unpack(ARGV, first, math.min(first + 999, #ARGV))}
  redis.call('HDEL', spent_key, unpack(keys))
  local reserveds = redis.call('HMGET', reserved_key, unpack(keys))
  local idle = {}
  for i = 1, #keys do
    if reserveds[i] == '0' then idle[#idle + 1] = keys[i] end
  end
  if #idle > 0 then redis.call('HDEL', reserved_key, unpack(idle)) end
end
return 0
"""
)

# ARGV: now, batch, '1' if a key is one a settle defers, then keys. Returns
# {more, spent1, reserved1, ...}.
_BALANCES = (
    _PRELUDE
    + """
local batch = ARGV[2]
local more = expire(now_of(ARGV[1]), batch)
if ARGV[3] == '1' and fold(batch) == 1 then more = 1 end
local result = {more}
for i = 4, #ARGV do
  result[#result + 1] = redis.call('HGET', spent_key, ARGV[i]) or '0'
  result[#result + 1] = redis.call('HGET', reserved_key, ARGV[i]) or '0'
end
return result
"""
)

# ARGV: now, batch, prefix, glob pattern. Returns {more, key1, spent1, reserved1, ...}.
_SCAN = (
    _PRELUDE
    + """
local more = expire(now_of(ARGV[1]), ARGV[2])
if fold(ARGV[2]) == 1 then more = 1 end
local prefix, pattern = ARGV[3], ARGV[4]
local found, order = {}, {}
for _, hash in ipairs({spent_key, reserved_key}) do
  local cursor = '0'
  repeat
    local page = redis.call('HSCAN', hash, cursor, 'MATCH', pattern, 'COUNT', 1000)
    cursor = page[1]
    local items = page[2]
    for j = 1, #items, 2 do
      local key = items[j]
      if string.sub(key, 1, #prefix) == prefix and items[j + 1] ~= '0'
          and not found[key] then
        found[key] = true
        order[#order + 1] = key
      end
    end
  until cursor == '0'
end
local result = {more}
for _, key in ipairs(order) do
  result[#result + 1] = key
  result[#result + 1] = redis.call('HGET', spent_key, key) or '0'
  result[#result + 1] = redis.call('HGET', reserved_key, key) or '0'
end
return result
"""
)

# ARGV: now, batch. Returns {more, id1, expires1, holds1, ...}.
_OPEN = (
    _PRELUDE
    + """
local more = expire(now_of(ARGV[1]), ARGV[2])
local result = {more}
local open = redis.call('ZRANGE', open_key, 0, -1, 'WITHSCORES')
for j = 1, #open, 2 do
  result[#result + 1] = open[j]
  result[#result + 1] = open[j + 1]
  result[#result + 1] = redis.call('HGET', holds_key, open[j]) or '[]'
end
return result
"""
)

# Budget definitions. KEYS: the definitions hash (which also holds the
# fields "\0mark", "\0version" and "\0floor"), the index (sorted set: name ->
# version of its last change, plus "\0" .. mark at 0 to show it is whole), the
# deleted names (sorted set: name -> when deleted).
_BUDGET_PRELUDE = """
-- A string, so that redis.call gets it exactly (Lua numbers become 14 digits).
local function now_of(arg)
  if arg == '' then
    local t = redis.call('TIME')
    return t[1] .. '.' .. string.format('%06d', tonumber(t[2]))
  end
  return arg
end

-- Give definitions a mark if they have none (the first ever, or a ledger of
-- an older budgetguard); a new mark starts a new index. Returns the mark.
local function ensure_mark(new)
  local mark = redis.call('HGET', KEYS[1], '\\0mark')
  if mark then return mark end
  redis.call('DEL', KEYS[2], KEYS[3])
  local version = redis.call('HINCRBY', KEYS[1], '\\0version', 0)
  -- Deleted names were not kept with a new index: older readers read all.
  redis.call('HSET', KEYS[1], '\\0mark', new, '\\0floor', version)
  local all = redis.call('HKEYS', KEYS[1])
  for _, name in ipairs(all) do
    if string.sub(name, 1, 1) ~= '\\0' then redis.call('ZADD', KEYS[2], version, name) end
  end
  redis.call('ZADD', KEYS[2], 0, '\\0' .. new)
  return new
end
"""

# ARGV: name, definition, a new mark.
_PUT_BUDGET = (
    _BUDGET_PRELUDE
    + """
ensure_mark(ARGV[3])
local version = redis.call('HINCRBY', KEYS[1], '\\0version', 1)
redis.call('HSET', KEYS[1], ARGV[1], ARGV[2])
redis.call('ZADD', KEYS[2], version, ARGV[1])
redis.call('ZREM', KEYS[3], ARGV[1])
return version
"""
)

# ARGV: name, now, seconds deleted names are kept. Returns 1 if deleted.
_DELETE_BUDGET = (
    _BUDGET_PRELUDE
    + """
if redis.call('HDEL', KEYS[1], ARGV[1]) == 0 then return 0 end
local now = now_of(ARGV[2])
local version = redis.call('HINCRBY', KEYS[1], '\\0version', 1)
redis.call('ZADD', KEYS[2], version, ARGV[1])
redis.call('ZADD', KEYS[3], string.format('%.17g', now), ARGV[1])
-- Forget names deleted more than a day ago, a few per call; a reader that
-- last looked before them gets a full read (the floor).
local old = redis.call('ZRANGEBYSCORE', KEYS[3], '-inf',
  '(' .. string.format('%.17g', now - tonumber(ARGV[3])), 'LIMIT', 0, 100)
if #old > 0 then
  local floor = tonumber(redis.call('HGET', KEYS[1], '\\0floor') or '0')
  for _, name in ipairs(old) do
    local seen = tonumber(redis.call('ZSCORE', KEYS[2], name) or '0')
    if seen > floor then floor = seen end
    redis.call('ZREM', KEYS[2], name)
    redis.call('ZREM', KEYS[3], name)
  end
  redis.call('HSET', KEYS[1], '\\0floor', floor)
end
return 1
"""
)

# ARGV: since's mark or '', since's version, a new mark (for definitions
# without one). Returns {mark or false, version, full, name1, definition1 or
# false, ...}.
_BUDGET_CHANGES = (
    _BUDGET_PRELUDE
    + """
if redis.call('EXISTS', KEYS[1]) == 0 then return {false, 0, 1} end
local mark = redis.call('HGET', KEYS[1], '\\0mark')
local full = 0
if not mark or not redis.call('ZSCORE', KEYS[2], '\\0' .. (mark or '')) then
  -- No mark yet (an older budgetguard wrote these), or the index is gone
  -- (evicted on its own): mark them and index them anew.
  redis.call('HDEL', KEYS[1], '\\0mark')
  mark = ensure_mark(mark or ARGV[3])
  full = 1
end
local version = tonumber(redis.call('HGET', KEYS[1], '\\0version') or '0')
local floor = tonumber(redis.call('HGET', KEYS[1], '\\0floor') or '0')
local since = tonumber(ARGV[2])
local result = {mark, version}
if full == 1 or ARGV[1] ~= mark or since < floor or since > version then
  result[3] = 1
  local all = redis.call('HGETALL', KEYS[1])
  for i = 1, #all, 2 do
    if string.sub(all[i], 1, 1) ~= '\\0' then
      result[#result + 1] = all[i]
      result[#result + 1] = all[i + 1]
    end
  end
  return result
end
result[3] = 0
for _, name in ipairs(redis.call('ZRANGEBYSCORE', KEYS[2], '(' .. since, '+inf')) do
  result[#result + 1] = name
  result[#result + 1] = redis.call('HGET', KEYS[1], name) or false
end
return result
"""
)

_SCRIPTS = {
    "reserve": _RESERVE,
    "settle": _SETTLE,
    "release": _RELEASE,
    "end": _END,
    "add": _ADD,
    "clear": _CLEAR,
    "balances": _BALANCES,
    "scan": _SCAN,
    "open": _OPEN,
    "put_budget": _PUT_BUDGET,
    "delete_budget": _DELETE_BUDGET,
    "budget_changes": _BUDGET_CHANGES,
}
_BUDGET_SCRIPTS = frozenset(("put_budget", "delete_budget", "budget_changes"))


def _import_redis() -> Any:
    try:
        import redis
        import redis.asyncio
        import redis.backoff
        import redis.retry
    except ModuleNotFoundError as error:
        raise ConfigurationError(
            "the redis:// ledger needs the redis package, which is not installed; "
            f"install it with: {install_hint('redis')}"
        ) from error
    return redis


class _Link:
    """One redis-py connection and whether a command on it was cut short.

    ``dirty`` is set before a command is sent and cleared only once its whole
    reply has been read. A connection found dirty may still receive the reply
    of the command that was cut short, so it is reconnected before its next
    use: a late reply can never be taken for the answer to another command.
    """

    __slots__ = ("__weakref__", "conn", "dirty")

    def __init__(self, conn: Any) -> None:
        self.conn = conn
        self.dirty = False


class _AsyncLinks:
    """One event loop's idle asyncio connections (asyncio connections are bound to a loop)."""

    def __init__(self, pool: Any) -> None:
        self.pool = pool
        self.idle: list[_Link] = []

    def take(self) -> _Link:
        """Return an idle connection, or a new one."""
        if self.idle:
            return self.idle.pop()
        return _Link(self.pool.connection_class(**self.pool.connection_kwargs))


class _Ending(NamedTuple):
    """A settle waiting to ride along with a later command."""

    id: str
    args: tuple[Any, ...]  # a settle's (key, amount) pairs, flat
    queued: float  # time.monotonic() when queued


class _Queue:
    """This process's settles not yet acknowledged by Redis, oldest first.

    ``waiting`` were sent by nobody yet; ``sending`` were taken by a command
    whose reply is still on its way (by token). An entry leaves only when the
    reply of a batch holding it says it ran; a batch that failed puts its
    entries back in front, and sets ``failing`` until a batch lands.
    ``landed`` remembers the ids of the last settles written, so that a
    repeat in this process returns ``False`` as it would without the queue.
    """

    def __init__(self) -> None:
        self.lock = threading.Lock()
        self.waiting: list[_Ending] = []
        self.sending: dict[int, list[_Ending]] = {}
        self.ids: set[str] = set()
        self.landed: dict[str, None] = {}
        self.failing = False
        #: Set by close() and at exit: settles from then on are written at once.
        self.final = False
        self.wake = threading.Event()
        #: The flusher found nothing waiting and waits for ``wake``: the next put sets it.
        self.parked = True
        self.flusher: threading.Thread | None = None
        self._tokens = itertools.count()

    def size(self) -> int:
        """Return how many entries wait or are being sent."""
        return len(self.ids)

    def put(self, entry: _Ending) -> bool:
        """Queue ``entry``; ``False`` if its id waits or landed (a repeat changes nothing)."""
        with self.lock:
            if entry.id in self.ids or entry.id in self.landed:
                return False
            self.ids.add(entry.id)
            self.waiting.append(entry)
            # Wake the flusher only when it is parked: a flusher that is
            # sleeping until an entry is due looks again by itself, and a wake
            # per settle would cost a thread switch per call (the next
            # command usually carries the settle before the flusher runs).
            parked, self.parked = self.parked, False
        if parked:
            self.wake.set()
        return True

    def take(self, *, everything: bool) -> tuple[int, list[_Ending]] | None:
        """Take the waiting entries (and with ``everything`` a copy of those being sent)."""
        if not self.ids:  # unlocked peek: a miss only delays an entry to the next command
            return None
        with self.lock:
            mine, self.waiting = self.waiting, []
            others = [e for batch in self.sending.values() for e in batch] if everything else []
            if not mine and not others:
                return None
            token = next(self._tokens)
            if mine:
                self.sending[token] = mine
            return token, mine + others

    def done(self, token: int, *, ok: bool, failing: bool = True) -> None:
        """Acknowledge the entries taken under ``token``, or put them back in front."""
        with self.lock:
            mine = self.sending.pop(token, [])
            if ok:
                for entry in mine:
                    self.ids.discard(entry.id)
                    self.landed[entry.id] = None
                while len(self.landed) > _REMEMBERED:
                    del self.landed[next(iter(self.landed))]
                self.failing = False
                return
            self.waiting[:0] = mine
            if failing:
                self.failing = True
        if mine:
            self.wake.set()

    def due_in(self, delay: float) -> float | None:
        """Return seconds until the oldest waiting entry is due; ``None`` if none waits."""
        with self.lock:
            if not self.waiting:
                self.wake.clear()
                self.parked = True
                return None
            return self.waiting[0].queued + delay - time.monotonic()


def _flush_loop(ref: weakref.ref[RedisLedger], queue: _Queue, delay: float) -> None:
    """Write queued settles that waited ``delay`` seconds for a command to carry them."""
    backoff = 0.0
    lingered = False
    while True:
        queue.wake.wait(1.0)
        ledger = ref()
        if ledger is None or ledger._queue is not queue:  # collected, or replaced by a fork
            return
        due = queue.due_in(delay)
        del ledger  # never keep the ledger alive while waiting
        if due is None:
            if queue.final:  # closed, or the process is exiting: settles go at once now
                with queue.lock:
                    queue.flusher = None
                return
            # Woken by a settle that the next command carried first (the usual
            # case): look again in ``delay`` rather than be woken by the next
            # settle, and park (wait for ``wake``) only when the second look
            # finds nothing either, so that a busy process wakes this thread
            # about once per ``delay``, not once per call.
            lingered = not lingered
            if lingered:
                time.sleep(delay)
            continue
        lingered = False
        if due > 0 or backoff:
            time.sleep(max(due, backoff))
            backoff = 0.0 if queue.final else backoff
            continue
        ledger = ref()
        if ledger is None:
            return
        try:
            ledger._flush_waiting()
            backoff = 0.0
        except StorageError as error:
            backoff = min(1.0, max(0.05, backoff * 2))
            logger.warning("could not write queued settles (%s); retrying", error)
        except Exception:  # never let the flusher die: the next command still carries them
            backoff = 1.0
            logger.exception("could not write queued settles; retrying")
        del ledger


def _flush_at_exit(ref: weakref.ref[RedisLedger]) -> None:
    # The queued settles get one last write before the process ends; settles
    # after this one (an outbox written at exit) are written at once.
    ledger = ref()
    if ledger is None or ledger._pid != os.getpid():
        return
    ledger._queue.final = True
    try:
        ledger.flush()
    except StorageError as error:
        logger.error(
            "Redis ledger %s: %d queued settle(s) could not be written at exit (%s); their "
            "holds expire uncharged",
            ledger.safe_url,
            ledger._queue.size(),
            error,
        )


class RedisLedger(Ledger):
    """Keep spend in Redis, one Lua script per operation, shared by every host.

    Options (keyword arguments, or query parameters for ``prefix``,
    ``idempotency_ttl``, ``timeout`` and ``settle_delay``): ``prefix`` namespaces the keys;
    ``timeout`` seconds one operation may take before it is reported as a
    ``StorageError`` (default 5; ``socket_timeout`` is the older name);
    ``idempotency_ttl`` seconds for which ended ids are remembered (default
    3600, at least 60; ``ended_ttl`` is the older name); ``clock`` a clock of
    the caller's instead of the server's ``TIME`` (tests); ``expire_batch``
    expired reservations released per call (default 100); ``settle_delay``
    seconds a settle may wait in this process for a command to carry it
    (default 0: written at once; see the module's docstring). Other keyword
    arguments go to redis-py's connections.
    """

    schemes = ("redis", "rediss", "unix")
    shared = True
    max_units = 2**53 - 1

    def __init__(
        self,
        url: str,
        *,
        clock: Callable[[], float] | None = None,
        prefix: str | None = None,
        timeout: float | str | None = None,
        socket_timeout: float | str | None = None,
        idempotency_ttl: float | str | None = None,
        ended_ttl: float | str | None = None,
        expire_batch: int = 100,
        settle_delay: float | str | None = None,
        **client_options: Any,
    ) -> None:
        super().__init__(url, clock=clock or time.time)
        #: True when the scripts take the time from the server's clock (no clock= given).
        self.server_time = clock is None
        #: This host's clock, and how far the server's is ahead of it (``sync_clock``).
        self._host_clock: Callable[[], float] = time.time
        self.clock_offset = 0.0
        if self.server_time:
            self.clock = self._server_clock
        self.safe_url = redact(url)
        redis = _import_redis()
        parts = urlsplit(url)
        scheme = parts.scheme.lower()
        if scheme not in self.schemes:
            raise ConfigurationError(f"not a Redis URL: {self.safe_url!r}")
        database = parts.path.strip("/")
        if scheme != "unix" and database and not database.isdigit():
            # redis-py would silently fall back to database 0.
            raise ConfigurationError(
                f"malformed Redis URL {self.safe_url!r}: the path must be a database "
                f"number such as /0, got {parts.path!r}"
            )
        query = dict(parse_qsl(parts.query, keep_blank_values=True))
        prefix = prefix if prefix is not None else query.pop("prefix", "")
        query.pop("prefix", None)
        ttls = {
            name: value
            for name, value in (
                ("idempotency_ttl", idempotency_ttl),
                ("ended_ttl", ended_ttl),
            )
            if value is not None
        }
        for name in ("idempotency_ttl", "ended_ttl"):
            if name in query:
                ttls.setdefault(name, query.pop(name))
        if len(ttls) > 1:
            raise ConfigurationError(
                f"idempotency_ttl and ended_ttl name the same option; give one ({self.safe_url})"
            )
        ttl_name, ttl_value = next(iter(ttls.items()), ("idempotency_ttl", None))
        #: Seconds for which ended reservation ids and add op ids are remembered.
        self.idempotency_ttl = check_idempotency_ttl(ttl_value, self.safe_url, ttl_name)
        self.ended_ttl = self.idempotency_ttl  # the older name
        self._ttl = repr(self.idempotency_ttl)
        given = {
            name: value
            for name, value in (
                ("timeout", timeout if timeout is not None else query.pop("timeout", None)),
                (
                    "socket_timeout",
                    socket_timeout
                    if socket_timeout is not None
                    else query.pop("socket_timeout", None),
                ),
            )
            if value is not None
        }
        query.pop("timeout", None)
        query.pop("socket_timeout", None)
        if len(given) > 1:
            raise ConfigurationError(
                f"timeout and socket_timeout name the same deadline; give one ({self.safe_url})"
            )
        name, raw = next(iter(given.items()), ("timeout", None))
        #: Seconds one operation may take (connect, send and the reply).
        self.timeout = _positive(name, raw, _DEFAULT_SOCKET_TIMEOUT, self.safe_url)
        if not isinstance(expire_batch, int) or isinstance(expire_batch, bool) or expire_batch < 1:
            raise ConfigurationError(
                f"expire_batch must be a positive integer, got {expire_batch!r}"
            )
        self.expire_batch = expire_batch
        raw_delay = settle_delay if settle_delay is not None else query.pop("settle_delay", None)
        query.pop("settle_delay", None)
        #: Seconds a settle or release may wait in this process for a command to carry it.
        self.settle_delay = _settle_delay(raw_delay, self.safe_url)
        self._exit_hook = False
        if not isinstance(prefix, str) or any(c in prefix for c in "{}"):
            raise ConfigurationError(f"prefix must be a string without braces, got {prefix!r}")
        self.prefix = prefix
        tag = "{bg:" + prefix + "}" if prefix else "{bg}"
        self.keys = tuple(
            f"{tag}:{name}"
            for name in ("spent", "reserved", "open", "holds", "settled", "released", "tallies")
        )
        #: The group JSON and the tallies added at once, of tally tuples seen lately.
        self._groups: dict[tuple[str, ...], tuple[str, tuple[str, ...]]] = {}
        self.added_key = f"{tag}:added"
        self.budgets_key = f"{tag}:budgets"
        self.budget_keys = (self.budgets_key, f"{tag}:budget_index", f"{tag}:budget_deleted")
        client_url = urlunsplit((scheme, parts.netloc, parts.path, urlencode(query), ""))
        # No retries anywhere: not of commands (a script whose reply was lost
        # may have run), not of connects (they would stretch the deadline).
        self._options: dict[str, Any] = {
            "socket_timeout": self.timeout,
            "socket_connect_timeout": self.timeout,
            "decode_responses": True,
            "retry": redis.retry.Retry(redis.backoff.NoBackoff(), 0),
            **client_options,
        }
        self._client_url = client_url
        self._redis = redis
        try:
            self._pool = redis.ConnectionPool.from_url(client_url, **self._options)
            # Build one connection now, so a bad option fails here, not on first use.
            self._pool.connection_class(**self._pool.connection_kwargs)
        except (ValueError, TypeError) as error:
            raise ConfigurationError(f"malformed Redis URL {self.safe_url!r}: {error}") from None
        self._shas = {
            name: hashlib.sha1(src.encode()).hexdigest() for name, src in _SCRIPTS.items()
        }
        # "EVALSHA sha numkeys keys..." of every script, encoded once.
        self._heads = {
            name: _Encoded.of("EVALSHA", sha, len(keys), *keys)
            for name, sha in self._shas.items()
            for keys in [self._script_keys(name)]
        }
        self._reset_links()
        self._async_lock = threading.Lock()
        self._async: weakref.WeakKeyDictionary[asyncio.AbstractEventLoop, _AsyncLinks] = (
            weakref.WeakKeyDictionary()
        )

    def __repr__(self) -> str:
        return f"RedisLedger({self.safe_url!r})"

    # -- the hot path ---------------------------------------------------------

    def reserve(self, reservation: Reservation) -> Refusal | None:
        """Hold every amount of ``reservation`` or none of them, in one script."""
        args = self._reserve_args(reservation)
        deadline = time.monotonic() + self.timeout
        while True:
            try:
                reply = self._run("reserve", args, deadline)
            except StorageError:
                # The script may have run: release its id (which also stops a
                # reserve still on its way), or its hold would last until expiry.
                self._release_quietly(reservation, deadline)
                raise
            if not self._retry_refusal(reply):
                return self._reserve_result(reservation, reply)

    def settle(
        self, reservation: Reservation, amount: int | Sequence[int], tallies: Sequence[str] = ()
    ) -> bool:
        """Charge every held key (by its unit) and tally; drop the holds once.

        With ``settle_delay`` the settle is queued and rides along with this
        process's next command (see the module's docstring): ``True`` once
        queued, ``False`` if the same id is still queued.
        """
        args = self._settle_args(reservation, amount, tallies)
        if self.settle_delay:
            queued = self._enqueue(reservation.id, args[2:])
            if queued is not None:
                return queued
        return _flag(self._run("settle", args))

    def release(self, reservation: Reservation) -> bool:
        """Drop the holds of ``reservation`` without charging (queued settles go first)."""
        return _flag(self._run("release", [reservation.id, self._now(), self._ttl]))

    def add(self, keys: Sequence[str], amount: int, *, op_id: str | None = None) -> bool:
        """Charge ``amount`` to every key unconditionally, once per ``op_id``."""
        args = self._add_args(keys, amount, op_id)
        if not keys and op_id is None:
            return True
        return _flag(self._run("add", args))

    # -- reading and administration -------------------------------------------

    def balances(self, keys: Sequence[str]) -> dict[str, Balance]:
        """Return the balance of every key asked for."""
        while True:
            args = [self._now(), self.expire_batch, _fold_flag(keys), *keys]
            reply = self._run("balances", args, carry="all")
            if not _more(reply):
                return _parse(_balances, keys, reply)

    def scan(self, prefix: str) -> dict[str, Balance]:
        """Return every key starting with ``prefix`` that holds anything."""
        while True:
            args = [self._now(), self.expire_batch, prefix, _glob(prefix)]
            reply = self._run("scan", args, carry="all")
            if not _more(reply):
                return _parse(_scanned, reply)

    def clear(self, keys: Sequence[str]) -> None:
        """Forget the spend of the given keys (open reservations stay held)."""
        if keys:
            args = [self.expire_batch, _fold_flag(keys), *keys]
            while _flag(self._run("clear", args)):
                pass  # tallies still to fold first

    def open_reservations(self) -> list[Reservation]:
        """Return the reservations still holding units."""
        while True:
            reply = self._run("open", [self._now(), self.expire_batch], carry="all")
            if not _more(reply):
                return _parse(_reservations, reply)

    def put_budget(self, name: str, definition: Mapping[str, Any]) -> None:
        """Store a budget definition under ``name`` (the first ever also writes the mark)."""
        _check_budget_name(name)
        self._run("put_budget", [name, budget_to_json(name, definition), uuid.uuid4().hex])

    def get_budget(self, name: str) -> dict[str, Any] | None:
        """Return the budget definition stored under ``name``."""
        if name.startswith("\0"):
            return None
        text = self._execute("HGET", self.budgets_key, name, carry="all")
        return budget_from_json(text) if text is not None else None

    def delete_budget(self, name: str) -> bool:
        """Delete a budget definition."""
        if name.startswith("\0"):
            return False
        return _flag(self._run("delete_budget", [name, self._now(), repr(TOMBSTONE_SECONDS)]))

    def list_budgets(self) -> dict[str, dict[str, Any]]:
        """Return every stored budget definition."""
        reply = self._execute("HGETALL", self.budgets_key, carry="all")
        # A map under RESP3, a flat list of names and values under RESP2.
        if not isinstance(reply, dict):
            reply = dict(zip(reply[::2], reply[1::2], strict=True))
        found: dict[str, str] = reply
        return {
            name: budget_from_json(text)
            for name, text in sorted(found.items())
            if not name.startswith("\0")
        }

    def budget_changes(self, since: tuple[str, int] | None) -> BudgetChanges:
        """Return the definitions changed after ``since`` (see ``Ledger.budget_changes``)."""
        args = self._changes_args(since)
        return _parse(_changes, self._run("budget_changes", args, carry="all"))

    async def abudget_changes(self, since: tuple[str, int] | None) -> BudgetChanges:
        """Do ``budget_changes`` on the asyncio client."""
        args = self._changes_args(since)
        return _parse(_changes, await self._arun("budget_changes", args, carry="all"))

    def _changes_args(self, since: tuple[str, int] | None) -> list[Any]:
        mark, version = since if since is not None else ("", 0)
        return [mark, int(version), uuid.uuid4().hex]

    def ping(self) -> None:
        """Check that Redis answers."""
        self._execute("PING")

    def sync_clock(self) -> float:
        """Measure how far the server's clock is ahead of this host's (``TIME``); return it.

        Without ``clock=``, ``clock()`` is this host's time plus that
        offset, so that a guard's windows (today, this month) and
        expiry times are the server's, whatever this host's clock says.
        A guard measures it when built and about every minute after.
        """
        before = self._host_clock()
        reply = self._execute("TIME", carry="")
        after = self._host_clock()
        try:
            seconds, micros = (int(part) for part in reply)
        except (TypeError, ValueError) as error:
            raise self._bad_reply(reply, error) from None
        self.clock_offset = seconds + micros / 1e6 - (before + after) / 2
        return self.clock_offset

    def _server_clock(self) -> float:
        """Return the server's time: this host's clock plus the offset last measured."""
        return self._host_clock() + self.clock_offset

    def check_durability(self) -> list[str]:
        """Return (and log as warnings) the server settings that can lose budgets or spend.

        A production budget needs ``maxmemory-policy noeviction`` (or a
        ``volatile-*`` policy: the ledger sets no TTLs, so those never evict
        its keys) and persistence (``appendonly yes``, or RDB ``save``
        points) so that a restart keeps what was spent. Servers that refuse
        ``CONFIG GET`` (some managed services) give one note saying so.
        """
        problems: list[str] = []
        try:
            policy = _config(self._execute("CONFIG", "GET", "maxmemory-policy"))
            appendonly = _config(self._execute("CONFIG", "GET", "appendonly"))
            save = _config(self._execute("CONFIG", "GET", "save"))
        except StorageError as error:
            if not isinstance(error.__cause__, self._redis.exceptions.ResponseError):
                # Unreachable: every operation will say so; nothing to warn about here.
                return [f"cannot reach the server to read its settings ({error})"]
            problems.append(f"cannot read the server settings ({error}); check them by hand")
        else:
            if policy.startswith("allkeys-"):
                problems.append(
                    f"maxmemory-policy is {policy}: under memory pressure Redis may evict "
                    "budget definitions and spend; use noeviction"
                )
            if appendonly != "yes" and not save.strip():
                problems.append(
                    "persistence is off (appendonly no, no save points): a restart loses "
                    "every budget and all spend; enable appendonly yes"
                )
        for problem in problems:
            logger.warning("Redis ledger %s: %s", self.safe_url, problem)
        return problems

    def close(self) -> None:
        """Write queued settles, then close every connection of this process's threads.

        asyncio connections close in ``aclose``. Settles that cannot be
        written are logged at ``ERROR`` with their number: their holds expire
        uncharged. Later settles are written at once.
        """
        if self.settle_delay and self._pid == os.getpid():
            queue = self._queue
            queue.final = True
            try:
                self.flush()
            except StorageError as error:
                logger.error(
                    "Redis ledger %s: %d queued settle(s) could not be written at close (%s); "
                    "their holds expire uncharged",
                    self.safe_url,
                    queue.size(),
                    error,
                )
            queue.wake.set()
            flusher = queue.flusher
            if flusher is not None and flusher is not threading.current_thread():
                # It stops once nothing waits; its connection is closed below.
                flusher.join(self.timeout)
        with self._links_lock:
            links = list(self._links)
        for link in links:
            with suppress(Exception):
                link.conn.disconnect()

    # -- asynchronous variants: redis.asyncio, the same scripts ----------------

    async def areserve(self, reservation: Reservation) -> Refusal | None:
        """Do ``reserve`` on the asyncio client; release it if the caller gives up."""
        args = self._reserve_args(reservation)
        return await shielded_reserve(
            self, asyncio.ensure_future(self._areserve(reservation, args)), reservation
        )

    async def _areserve(self, reservation: Reservation, args: list[Any]) -> Refusal | None:
        deadline = time.monotonic() + self.timeout
        while True:
            try:
                reply = await self._arun("reserve", args, deadline)
            except StorageError:
                await self._arelease_quietly(reservation, deadline)
                raise
            if not self._retry_refusal(reply):
                return self._reserve_result(reservation, reply)

    async def asettle(
        self, reservation: Reservation, amount: int | Sequence[int], tallies: Sequence[str] = ()
    ) -> bool:
        """Do ``settle`` on the asyncio client, finished even if the caller gives up."""
        args = self._settle_args(reservation, amount, tallies)
        if self.settle_delay:
            queued = self._enqueue(reservation.id, args[2:])
            if queued is not None:
                return queued
        return _flag(await shielded(self, self._arun("settle", args)))

    async def arelease(self, reservation: Reservation) -> bool:
        """Do ``release`` on the asyncio client, finished even if the caller gives up."""
        args = [reservation.id, self._now(), self._ttl]
        return _flag(await shielded(self, self._arun("release", args)))

    async def aadd(self, keys: Sequence[str], amount: int, *, op_id: str | None = None) -> bool:
        """Do ``add`` on the asyncio client, finished even if the caller gives up."""
        args = self._add_args(keys, amount, op_id)
        if not keys and op_id is None:
            return True
        return _flag(await shielded(self, self._arun("add", args)))

    async def abalances(self, keys: Sequence[str]) -> dict[str, Balance]:
        """Do ``balances`` on the asyncio client."""
        while True:
            args = [self._now(), self.expire_batch, _fold_flag(keys), *keys]
            reply = await self._arun("balances", args, carry="all")
            if not _more(reply):
                return _parse(_balances, keys, reply)

    async def aping(self) -> None:
        """Do ``ping`` on the asyncio client."""
        await self._aexecute("PING")

    async def aclose(self) -> None:
        """Close this event loop's asyncio connections and the synchronous ones."""
        loop = asyncio.get_running_loop()
        with self._async_lock:
            entry = self._async.pop(loop, None)
        if entry is not None:
            for link in entry.idle:
                with suppress(Exception):
                    await link.conn.disconnect()
        self.close()

    # -- internals ----------------------------------------------------------------

    def _reserve_args(self, reservation: Reservation) -> list[Any]:
        check_reservation(reservation)
        holds = [_hold_row(h) for h in reservation.holds]
        args: list[Any] = [
            reservation.id,
            self._now(),
            # With the server's clock, the hold's time to live: the client's
            # clock is used only to measure it, so its skew does not matter.
            repr(float(reservation.expires_at) - self.clock())
            if self.server_time
            else repr(float(reservation.expires_at)),
            self.expire_batch,
            self._ttl,
            json.dumps(holds),
        ]
        for h in reservation.holds:
            if h.limit is not None and (_deferred(h.key) or (h.prior and _deferred(h.prior))):
                args.append("1")  # the script adds waiting tallies first (see _deferred)
                break
        return args

    def _retry_refusal(self, reply: Any) -> bool:
        # A refusal seen while more expired reservations were still waiting
        # may be wrong; the refusal changed nothing, so simply ask again.
        try:
            return int(reply[0]) == 1 and int(reply[4]) == 1
        except (TypeError, ValueError, IndexError) as error:
            raise self._bad_reply(reply, error) from None

    def _reserve_result(self, reservation: Reservation, reply: Any) -> Refusal | None:
        try:
            status = int(reply[0])
            if status in (-1, 0):
                found = None
            else:
                index = int(reply[1])
                hold = reservation.holds[index]
                assert hold.limit is not None  # only holds with a limit refuse
                found = Refusal(
                    index,
                    hold.key,
                    hold.limit,
                    int(reply[2]),
                    int(reply[3]),
                    hold.amount,
                    int(reply[5]),
                )
        except (TypeError, ValueError, IndexError) as error:
            raise self._bad_reply(reply, error) from None
        if status == -1:
            raise ValueError(f"reservation id {reservation.id!r} was used before")
        return found

    def _settle_args(
        self, reservation: Reservation, amount: int | Sequence[int], tallies: Sequence[str]
    ) -> list[Any]:
        charges, tally = check_settle_amount(amount, reservation.holds)
        args: list[Any] = [reservation.id, self._now(), len(charges)]
        for key, charge in zip(reservation.keys, charges, strict=True):
            args += (key, _units(charge))
        if not tallies:
            args += ("0", "")
            return args
        args.append(_units(tally))
        split = self._groups.get(tallies) if type(tallies) is tuple else None
        if split is None:
            split = _split_tallies(tallies)
            if type(tallies) is tuple:
                if len(self._groups) >= _GROUPS_KEPT:
                    self._groups.clear()
                self._groups[tallies] = split
        args.append(split[0])
        args += split[1]
        return args

    def _add_args(self, keys: Sequence[str], amount: int, op_id: str | None) -> list[Any]:
        check_op_id(op_id)
        return [
            _units(amount),
            op_id or "",
            self._now(),
            repr(self.idempotency_ttl),
            *keys,
        ]

    def _now(self) -> str:
        """Return the time argument of a script: '' for the server's clock."""
        return "" if self.server_time else repr(float(self.clock()))

    def _script_keys(self, name: str) -> Sequence[str]:
        # The add script touches only the spent hash and its op ids.
        if name == "add":
            return (self.keys[0], self.added_key)
        return self.budget_keys if name in _BUDGET_SCRIPTS else self.keys

    def _run(
        self, name: str, args: Sequence[Any], deadline: float | None = None, carry: str = "new"
    ) -> Any:
        if deadline is None:
            deadline = time.monotonic() + self.timeout
        command = (self._heads[name], *args)
        try:
            return self._execute(*command, deadline=deadline, carry=carry)
        except StorageError as error:
            if not isinstance(error.__cause__, self._redis.exceptions.NoScriptError):
                raise
        # NOSCRIPT: the script did not run (the server restarted or flushed
        # its scripts), so loading it and running it again is safe.
        self._execute("SCRIPT", "LOAD", _SCRIPTS[name], deadline=deadline, carry="")
        return self._execute(*command, deadline=deadline, carry=carry)

    async def _arun(
        self, name: str, args: Sequence[Any], deadline: float | None = None, carry: str = "new"
    ) -> Any:
        if deadline is None:
            deadline = time.monotonic() + self.timeout
        command = (self._heads[name], *args)
        try:
            return await self._aexecute(*command, deadline=deadline, carry=carry)
        except StorageError as error:
            if not isinstance(error.__cause__, self._redis.exceptions.NoScriptError):
                raise
        await self._aexecute("SCRIPT", "LOAD", _SCRIPTS[name], deadline=deadline, carry="")
        return await self._aexecute(*command, deadline=deadline, carry=carry)

    def _left(self, deadline: float | None) -> float:
        """Return the seconds left before ``deadline``; ``StorageError`` if none."""
        if deadline is None:
            return self.timeout
        left = deadline - time.monotonic()
        if left <= 0:
            raise StorageError(
                f"Redis did not answer within timeout={self.timeout:g}s at {self.safe_url}"
            )
        return left

    def _execute(self, *command: Any, deadline: float | None = None, carry: str = "new") -> Any:
        """Send one command on this thread's connection and read its whole reply.

        ``carry`` says which queued settles and releases ride along in the same
        round trip, before the command: ``"new"`` those no other command took
        yet, ``"all"`` every one not yet acknowledged (reads: this process reads
        its own writes), ``""`` none. With no command it sends only what it
        carries (``flush``): ``StorageError`` unless that landed.
        """
        for _ in range(2):
            carried = self._take(carry) if carry and self.settle_delay else None
            if carried is None:
                return self._exchange([command], deadline)[0] if command else None
            token, entries = carried
            sent = (
                [self._end_command(entries), command] if command else [self._end_command(entries)]
            )
            try:
                replies = self._exchange(sent, deadline, raw=True)
            except BaseException:
                self._queue.done(token, ok=False)
                raise
            ran = self._landed(token, replies[0])
            if ran is None:
                with suppress(StorageError):
                    self._exchange([("SCRIPT", "LOAD", _END)], deadline)
            if ran or (carry != "all" and command):
                break
            # The batch did not run (NOSCRIPT: its script is loaded now) and a
            # read or a flush must see it written: send it again.
        if not command:
            if not ran:
                raise StorageError(
                    f"Redis did not take the queued settles at {self.safe_url}: {replies[0]!r:.200}"
                )
            return None
        if isinstance(replies[1], self._redis.exceptions.ResponseError):
            raise self._storage_error(replies[1]) from replies[1]
        return replies[1]

    def _exchange(
        self, commands: Sequence[Sequence[Any]], deadline: float | None, *, raw: bool = False
    ) -> list[Any]:
        """Send ``commands`` in one write and read every reply: one round trip.

        An error reply raises ``StorageError``, unless ``raw``: then it is
        returned in its place (the other replies still count).
        """
        link = self._link()
        conn = link.conn
        deadline = time.monotonic() + self._left(deadline)
        replies: list[Any] = []
        try:
            if link.dirty:  # the last command was cut short: its reply may still come
                conn.disconnect()
            link.dirty = True
            self._fresh(conn)
            conn.send_packed_command([_packed(commands)], check_health=False)
            for _ in commands:
                try:
                    replies.append(
                        conn.read_response(timeout=max(0.001, deadline - time.monotonic()))
                    )
                except self._redis.exceptions.ResponseError as error:
                    if not raw:  # an error reply is a whole reply: read the others
                        raise
                    replies.append(error)
            link.dirty = False
            return replies
        except self._redis.exceptions.ResponseError as error:
            # Read the replies still due, so that the connection stays in step.
            link.dirty = len(replies) + 1 < len(commands)
            raise self._storage_error(error) from error
        except (self._redis.exceptions.RedisError, OSError, TypeError, ValueError) as error:
            # TypeError / ValueError: redis-py parsing a reply it did not expect.
            raise self._storage_error(error) from error

    async def _aexecute(
        self, *command: Any, deadline: float | None = None, carry: str = "new"
    ) -> Any:
        """Send one command on an idle connection of this event loop and read its reply.

        ``carry`` as for ``_execute``.
        """
        for _ in range(2):
            carried = self._take(carry) if carry and self.settle_delay else None
            if carried is None:
                return (await self._aexchange([command], deadline))[0]
            token, entries = carried
            try:
                replies = await self._aexchange(
                    [self._end_command(entries), command], deadline, raw=True
                )
            except BaseException:
                self._queue.done(token, ok=False)
                raise
            ran = self._landed(token, replies[0])
            if ran is None:
                with suppress(StorageError):
                    await self._aexchange([("SCRIPT", "LOAD", _END)], deadline)
            if ran or carry != "all":
                break
        if isinstance(replies[1], self._redis.exceptions.ResponseError):
            raise self._storage_error(replies[1]) from replies[1]
        return replies[1]

    async def _aexchange(
        self, commands: Sequence[Sequence[Any]], deadline: float | None, *, raw: bool = False
    ) -> list[Any]:
        """Do ``_exchange`` on an idle connection of this event loop."""
        deadline = time.monotonic() + self._left(deadline)
        links = self._async_links()
        link = links.take()
        conn = link.conn
        replies: list[Any] = []
        try:
            if link.dirty:
                await conn.disconnect(nowait=True)
            link.dirty = True
            await self._afresh(conn)
            await conn.send_packed_command([_packed(commands)], check_health=False)
            for _ in commands:
                try:
                    replies.append(
                        await conn.read_response(timeout=max(0.001, deadline - time.monotonic()))
                    )
                except self._redis.exceptions.ResponseError as error:
                    if not raw:
                        raise
                    replies.append(error)
            link.dirty = False
            return replies
        except self._redis.exceptions.ResponseError as error:
            link.dirty = len(replies) + 1 < len(commands)
            raise self._storage_error(error) from error
        except (self._redis.exceptions.RedisError, OSError, TypeError, ValueError) as error:
            raise self._storage_error(error) from error
        finally:
            links.idle.append(link)  # a dirty one is reconnected by its next user

    # -- settles and releases that ride along (settle_delay) -----------------------

    def _enqueue(self, reservation_id: str, args: Sequence[Any]) -> bool | None:
        """Queue a settle; its result, or ``None`` when it must be written now."""
        queue = self._current_queue()
        if queue.failing or queue.final or queue.size() >= _MAX_QUEUED:
            return None
        added = queue.put(_Ending(reservation_id, tuple(args), time.monotonic()))
        if queue.flusher is None:
            self._start_flusher(queue)
        return added

    def _current_queue(self) -> _Queue:
        if self._pid != os.getpid():
            self._reset_links()  # a forked child: the parent's queue is the parent's to send
        return self._queue

    def _take(self, carry: str) -> tuple[int, list[_Ending]] | None:
        return self._current_queue().take(everything=carry == "all")

    def _end_command(self, entries: Sequence[_Ending]) -> list[Any]:
        command: list[Any] = [self._heads["end"]]
        command.append(self._now())
        for entry in entries:
            command += (entry.id, len(entry.args), *entry.args)
        return command

    def _landed(self, token: int, reply: Any) -> bool | None:
        """Acknowledge carried entries by the reply of their batch, or queue them again.

        Return whether the batch ran; ``None`` when it did not because Redis
        lacks its script (NOSCRIPT): the caller loads it, and the next
        command carries the batch.
        """
        if isinstance(reply, list):
            self._queue.done(token, ok=True)
            return True
        missing = isinstance(reply, self._redis.exceptions.NoScriptError)
        self._queue.done(token, ok=False, failing=not missing)
        if missing:
            return None
        else:
            logger.warning(
                "Redis ledger %s: queued settles were not written (%r); retried, and settles "
                "are written at once until they are",
                self.safe_url,
                reply,
            )
        return False

    def flush(self) -> None:
        """Write every settle and release queued by ``settle_delay`` now, in one round trip.

        ``StorageError`` if Redis does not take them; they stay queued and are
        retried by the next command of this process and by the flusher.
        """
        self._flush("all")

    def _flush_waiting(self) -> None:
        self._flush("new")

    def _flush(self, carry: str) -> None:
        if self.settle_delay:
            self._execute(carry=carry)  # no command: the queued settles alone

    def _start_flusher(self, queue: _Queue) -> None:
        with queue.lock:
            if queue.flusher is not None:
                return
            queue.flusher = threading.Thread(
                target=_flush_loop,
                args=(weakref.ref(self), queue, self.settle_delay),
                name="budgetguard-redis-settles",
                daemon=True,
            )
        queue.flusher.start()
        if not self._exit_hook:
            self._exit_hook = True
            atexit.register(_flush_at_exit, weakref.ref(self))

    def _fresh(self, conn: Any) -> None:
        """Drop a connection that has unread data or that the server closed (restarted)."""
        try:
            stale = conn._sock is not None and conn.can_read()
        except (self._redis.exceptions.ConnectionError, OSError):
            stale = True
        if stale:
            conn.disconnect()

    async def _afresh(self, conn: Any) -> None:
        """Drop an asyncio connection that has unread data or that the server closed."""
        try:
            stale = conn.is_connected and await conn.can_read()
        except (self._redis.exceptions.ConnectionError, OSError):
            stale = True
        if stale:
            await conn.disconnect(nowait=True)

    def _release_quietly(self, reservation: Reservation, deadline: float) -> None:
        # Within what is left of the reserve's own deadline: a Redis that
        # does not answer gets no second wait; the hold then expires.
        try:
            self._run("release", [reservation.id, self._now(), self._ttl], deadline)
        except StorageError as error:
            logger.warning(
                "could not release reservation %s after a lost reply (%s); it expires on its own",
                reservation.id,
                error,
            )

    async def _arelease_quietly(self, reservation: Reservation, deadline: float) -> None:
        try:
            await self._arun("release", [reservation.id, self._now(), self._ttl], deadline)
        except StorageError as error:
            logger.warning(
                "could not release reservation %s after a lost reply (%s); it expires on its own",
                reservation.id,
                error,
            )

    def _bad_reply(self, reply: Any, error: BaseException) -> StorageError:
        return StorageError(
            f"unexpected reply from Redis at {self.safe_url}: {reply!r:.120} "
            f"({type(error).__name__}: {error})"
        )

    def _storage_error(self, error: BaseException) -> StorageError:
        kind = type(error).__name__
        exceptions = self._redis.exceptions
        if isinstance(error, exceptions.TimeoutError):
            problem = f"Redis did not answer within timeout={self.timeout:g}s"
        elif isinstance(error, exceptions.AuthenticationError):
            problem = "Redis refused the credentials"
        elif isinstance(error, exceptions.ConnectionError | OSError):
            problem = "cannot reach Redis"
        elif isinstance(error, exceptions.RedisError):
            problem = "Redis reported an error"
        else:
            problem = "redis-py failed on the reply"
        text = f"{problem} at {self.safe_url}: {kind}: {redact_text(str(error))}"
        if isinstance(error, exceptions.ConnectionError | exceptions.TimeoutError | OSError):
            text += " (a write may have run; repeat it with the same id, it counts once)"
        return StorageError(text)

    def _reset_links(self) -> None:
        # At start and in a forked child: a connection inherited through fork
        # shares its socket with the parent and must not be used, only dropped.
        self._pid = os.getpid()
        self._queue = _Queue()
        self._local = threading.local()
        self._links_lock = threading.Lock()
        self._links: weakref.WeakSet[_Link] = weakref.WeakSet()

    def _link(self) -> _Link:
        if self._pid != os.getpid():
            self._reset_links()
        link: _Link | None = getattr(self._local, "link", None)
        if link is None:
            link = _Link(self._pool.connection_class(**self._pool.connection_kwargs))
            self._local.link = link
            with self._links_lock:
                self._links.add(link)
        return link

    def _async_links(self) -> _AsyncLinks:
        loop = asyncio.get_running_loop()
        with self._async_lock:
            entry = self._async.get(loop)
            if entry is None:
                try:
                    pool = self._redis.asyncio.ConnectionPool.from_url(
                        self._client_url, **self._options
                    )
                except (ValueError, TypeError) as error:
                    raise ConfigurationError(
                        f"malformed Redis URL {self.safe_url!r}: {error}"
                    ) from None
                entry = self._async[loop] = _AsyncLinks(pool)
            return entry


def redact(url: str) -> str:
    """Return ``url`` with its password (in the authority or the query) replaced by ``***``."""
    url = re.sub(r"^([A-Za-z][A-Za-z0-9+.-]*://[^:/@?#]*):[^/?#]*@", r"\1:***@", url)
    return re.sub(r"([?&]password=)[^&#]*", r"\1***", url, flags=re.IGNORECASE)


def redact_text(text: str) -> str:
    """Hide anything that looks like a URL password inside an error message."""
    words = []
    for word in text.split(" "):
        words.append(redact(word) if "://" in word and "@" in word else word)
    return " ".join(words)


def _units(amount: int) -> str:
    if type(amount) is int and 0 <= amount < _MAX_UNITS:
        return str(amount)  # the usual amount, without a call (seven a guarded call)
    check_units(amount)
    if amount >= _MAX_UNITS:
        raise ValueError(
            f"amount {amount} is too large for the Redis ledger (Lua counts exactly "
            f"up to {_MAX_UNITS} units)"
        )
    return str(amount)


def _deferred(key: str) -> bool:
    """Whether a settle adds to ``key`` later, with its other tallies, in one group.

    These are the guard's report counters (``budgetguard/_keys.py``: the
    lifetime ``t|`` and daily ``d|`` tallies and the per-model ``...|m=``
    ones), which no budget holds: a settle adds to all of them with one
    command, and reads add the groups to the keys first (``fold``). Any other
    key is added at once. Part of the data format: every process sharing a
    ledger must agree on it.
    """
    return key.startswith((_keys.TOTAL, _keys.DAY)) or _keys.MODEL in key


def _fold_flag(keys: Sequence[str]) -> str:
    """Return the argument telling a read script to fold tallies first: '1' or ''."""
    return "1" if any(_deferred(key) for key in keys) else ""


def _split_tallies(tallies: Sequence[str]) -> tuple[str, tuple[str, ...]]:
    """Return a settle's tally arguments: the JSON group of deferred keys ('' if none), the rest."""
    later = [key for key in tallies if _deferred(key)]
    now = tuple(key for key in tallies if not _deferred(key))
    return (json.dumps(later, ensure_ascii=False, separators=(",", ":")) if later else ""), now


def _hold_row(hold: Hold) -> list[Any]:
    """Return the JSON row of a hold: [key, limit, amount] as strings, then the rest if set."""
    row: list[Any] = [
        hold.key,
        None if hold.limit is None else _units(hold.limit),
        _units(hold.amount),
    ]
    if hold.unit or hold.over is not None or hold.prior is not None:
        row += [hold.unit, hold.over, hold.prior, hold.weight]
    return row


def _glob(prefix: str) -> str:
    # Redis MATCH patterns are globs: escape their special characters.
    escaped = "".join("\\" + c if c in "*?[]\\^-" else c for c in prefix)
    return escaped + "*"


def _positive(name: str, value: object, default: float, url: str) -> float:
    if value is None:
        return default
    try:
        number = float(value)  # type: ignore[arg-type]
    except (TypeError, ValueError):
        number = float("nan")
    if not 0 < number < float("inf"):
        raise ConfigurationError(
            f"{name} must be a positive number of seconds, got {value!r} ({url})"
        )
    return number


class _Encoded(bytes):
    """Arguments of a command already encoded in RESP (``arity`` of them)."""

    arity: int

    @classmethod
    def of(cls, *args: Any) -> _Encoded:
        """Encode ``args`` once, to be sent many times."""
        encoded = cls(_packed([args])[len(b"*%d\r\n" % len(args)) :])
        encoded.arity = len(args)
        return encoded


def _packed(commands: Sequence[Sequence[Any]]) -> bytes:
    """Encode commands in RESP, as redis-py would, at a fraction of its cost.

    Arguments are strings (UTF-8), bytes, numbers (their ``repr``) or
    ``_Encoded`` runs of arguments; a reserve + settle sends about fifty, so
    this is on the hot path.
    """
    out: list[bytes] = []
    append = out.append
    for command in commands:
        count = len(command)
        head = command[0] if command else None
        if type(head) is _Encoded:
            count += head.arity - 1
        append(b"*%d\r\n" % count)
        for arg in command:
            kind = type(arg)
            if kind is str:  # nearly every argument: one test, not four
                data = arg.encode()
            elif kind is _Encoded:
                append(arg)
                continue
            elif kind is bytes:
                data = arg
            elif isinstance(arg, str):
                data = arg.encode()
            elif isinstance(arg, bytes):
                data = arg
            elif isinstance(arg, int | float) and not isinstance(arg, bool):
                data = repr(arg).encode()
            else:
                raise TypeError(f"cannot send {type(arg).__name__} to Redis: {arg!r:.80}")
            append(b"$%d\r\n%s\r\n" % (len(data), data))
    return b"".join(out)


def _settle_delay(value: object, url: str) -> float:
    if value is None:
        return 0.0
    try:
        number = float(value)  # type: ignore[arg-type]
    except (TypeError, ValueError):
        number = float("nan")
    if isinstance(value, bool) or not 0 <= number <= _MAX_SETTLE_DELAY:
        raise ConfigurationError(
            f"settle_delay must be a number of seconds from 0 to {_MAX_SETTLE_DELAY:g} "
            f"(0 writes every settle at once), got {value!r} ({url})"
        )
    return number


def _config(reply: Any) -> str:
    """Read one value from a ``CONFIG GET`` reply (a map under RESP3, a pair under RESP2)."""
    if isinstance(reply, dict):
        return str(next(iter(reply.values()), ""))
    return str(reply[1]) if len(reply) > 1 else ""


def _flag(reply: Any) -> bool:
    """Read a script's 0/1 answer; ``StorageError`` for anything else."""
    if reply in (0, 1):
        return bool(reply)
    raise StorageError(f"unexpected reply from Redis: {reply!r:.120}")


def _more(reply: Any) -> bool:
    """Read the "more expired reservations wait" flag that opens a read script's reply."""
    try:
        return bool(int(reply[0]))
    except (TypeError, ValueError, IndexError) as error:
        raise StorageError(f"unexpected reply from Redis: {reply!r:.120} ({error})") from None


def _parse(read: Callable[..., T], *args: Any) -> T:
    """Turn a script's reply into values; a reply of the wrong shape is a ``StorageError``."""
    try:
        return read(*args)
    except (TypeError, ValueError, IndexError, KeyError) as error:
        raise StorageError(
            f"unexpected reply from Redis ({type(error).__name__}: {error})"
        ) from None


def _check_budget_name(name: object) -> None:
    if isinstance(name, str) and name.startswith("\0"):
        raise ValueError(f"budget names starting with NUL are the ledger's own, got {name!r}")


def _changes(reply: Sequence[Any]) -> BudgetChanges:
    mark = reply[0] if reply[0] else None
    changed: dict[str, dict[str, Any] | None] = {}
    for i in range(3, len(reply), 2):
        text = reply[i + 1]
        changed[reply[i]] = budget_from_json(text) if text is not None else None
    return BudgetChanges(mark, int(reply[1]), changed, bool(int(reply[2])))


def _balances(keys: Sequence[str], reply: Sequence[Any]) -> dict[str, Balance]:
    return {
        key: Balance(int(reply[1 + 2 * i]), int(reply[2 + 2 * i])) for i, key in enumerate(keys)
    }


def _scanned(reply: Sequence[Any]) -> dict[str, Balance]:
    found: dict[str, Balance] = {}
    for i in range(1, len(reply), 3):
        spent, reserved = int(reply[i + 1]), int(reply[i + 2])
        if spent or reserved:
            found[reply[i]] = Balance(spent, reserved)
    return found


def _reservations(reply: Sequence[Any]) -> list[Reservation]:
    found = []
    for i in range(1, len(reply), 3):
        holds = tuple(
            Hold(key, None if limit is None else int(limit), int(amount), *rest)
            for key, limit, amount, *rest in json.loads(reply[i + 2])
        )
        found.append(Reservation(reply[i], holds, float(reply[i + 1])))
    return found
