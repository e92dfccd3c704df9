#!lua name=quotad
-- quotad's grant function (global.c loads it with FUNCTION LOAD REPLACE).
-- One hash per global limit: stock (units, may be < 0: debt), rem (refill
-- remainder, units*us), t (us of the last refill, Redis TIME), and per host
-- o:HOST (outstanding: what the host says it holds, plus what it was just
-- granted), d:HOST (its demand, units per period), s:HOST (last seen, us),
-- a:HOST (its allowance: its fair share of the rate, accrued since it was
-- last seen, up to its cap).
-- INVARIANT: stock + sum(o) <= b after every call (the refill is capped by
-- it, grants move units from stock to o, reports only lower o).
-- Water-filling @total over the demands @dem (sorted in place): the level
-- (hosts below it get their demand, the others the level) and 0, or, if
-- all fit, nil and the leftover each host gets on top of its demand.
local function water_level(total, dem)
  table.sort(dem)
  local left, n = total, #dem
  for i = 1, n do
    local fair = left / (n - i + 1)
    if dem[i] > fair then return fair, 0 end
    left = left - dem[i]
  end
  return nil, left / n
end

-- A host's share of demand @demand at water_level()'s @level, @extra.
local function share_of(demand, level, extra)
  if level == nil then return demand + extra end
  if demand <= level then return demand end
  return level
end

-- This host's share of @total by water-filling over the demands @dem (its
-- own, @demand, among them): hosts below the level get their demand, the
-- others split the rest equally; if all fit, the leftover is split equally.
local function fair_share(total, dem, demand)
  return share_of(demand, water_level(total, dem))
end

local function now_us()
  local tm = redis.call('TIME')
  return tonumber(tm[1]) * 1000000 + tonumber(tm[2])
end

-- The other hosts of hash @k (fields @st) as seen by @host at @now: reap
-- those silent for @lease (their fields deleted); the rest are live: the
-- sum of their o, the live count (with @host), the reaped count, the
-- demands (@demand, @host's own, first) and the live others as {n = name,
-- d = demand, o = held}.
local function others(k, st, host, lease, now, demand)
  local out, live, reaped = 0, 1, 0
  local dem, hs = { demand }, {}
  for f, v in pairs(st) do
    local name = string.match(f, '^s:(.*)$')
    if name and name ~= host then
      if tonumber(v) + lease < now then
        redis.call('HDEL', k, 's:' .. name, 'o:' .. name, 'd:' .. name, 'a:' .. name)
        reaped = reaped + 1
      else
        live = live + 1
        local o, d = tonumber(st['o:' .. name] or '0'), tonumber(st['d:' .. name] or '0')
        out = out + o
        dem[#dem + 1] = d
        hs[#hs + 1] = { n = name, d = d, o = o }
      end
    end
  end
  return out, live, reaped, dem, hs
end

local function grant(keys, args)
  local k = keys[1]
  local host = args[1]
  local L, P, b = tonumber(args[2]), tonumber(args[3]), tonumber(args[4])
  local lease, held, want = tonumber(args[5]), tonumber(args[6]), tonumber(args[7])
  local demand, debt = tonumber(args[8]), tonumber(args[9])
  -- the least a host can use (its hold plus a unit): the fair cap never
  -- goes below it, or a host could hold too little to admit anything
  local least = tonumber(args[10]) or 1
  local now = now_us()
  local h = redis.call('HGETALL', k)
  local st = {}
  for i = 1, #h, 2 do st[h[i]] = h[i + 1] end
  -- A missing hash (first use, or a master that restarted empty) starts
  -- EMPTY: whatever the hosts still hold is then within b.
  local stock = tonumber(st['stock'] or '0')
  local rem = tonumber(st['rem'] or '0')
  local last = tonumber(st['t']) or now
  -- a host whose lease expired stopped using what it held (it drops its
  -- grant before the lease runs out, global.c), so it is free again
  local out, live, reaped, dem = others(k, st, host, lease, now, demand)
  stock = stock - debt
  if now > last then
    local el = now - last
    if el >= P then
      stock = stock + L
      rem = 0
    elseif el * L < 4503599627370496 then
      local acc = rem + el * L
      local add = math.floor(acc / P)
      rem = acc - add * P
      stock = stock + add
    else
      local add = math.floor(el / P * L) - 1
      if add > 0 then stock = stock + add end
      rem = 0
    end
    last = now
  end
  local room = b - out - held
  if stock > room then
    stock = room
    rem = 0
  end
  -- Demand-weighted fair share of the rate L, as a share of the burst this
  -- host may hold.
  local share = fair_share(L, dem, demand)
  local cap = math.ceil(b * share / L)
  if cap < least then cap = least end
  -- The rate itself is shared, not only what a host may hold: a host's
  -- allowance a:HOST accrues at its share of L since its last call, up to
  -- its cap, and a grant spends it (else the host that calls first after a
  -- refill takes it all).
  local seen = tonumber(st['s:' .. host])
  local allow = tonumber(st['a:' .. host])
  if seen == nil or allow == nil then
    allow = cap
  elseif now > seen then
    allow = allow + share * (now - seen) / P
  end
  if allow > cap then allow = cap end
  local g = want
  if g > stock then g = stock end
  if g > cap - held then g = cap - held end
  if g > allow then g = allow end
  if g < 0 then g = 0 end
  g = math.floor(g)
  allow = allow - g
  stock = stock - g
  -- %.0f, not tostring: Lua 5.1 prints 14 digits, and TIME in us has 16
  local function s(x) return string.format('%.0f', x) end
  redis.call('HSET', k, 'stock', s(stock), 'rem', s(rem), 't', s(last),
    's:' .. host, s(now), 'o:' .. host, s(held + g), 'd:' .. host, s(demand),
    'a:' .. host, string.format('%.6f', allow))
  return { g, live, math.floor(stock), held + g, cap, reaped }
end

-- Whether host @a comes before host @b for a slot left by rounding: the
-- larger fraction, then the more held, then the name (host ids differ).
local function before(a, b)
  if a.r ~= b.r then return a.r > b.r end
  if a.o ~= b.o then return a.o > b.o end
  return a.n < b.n
end

-- Host @me's fair cap of the @M slots among the live hosts @hs ({n, d, o},
-- @me among them): its water-filling share rounded down, plus one of the
-- slots the rounding left (fewer than the hosts) if it comes before all but
-- fewer than that many hosts (before()). The caps add up to M, and a slot
-- left by rounding stays with a host that holds it: no churn between equal
-- hosts (ARCHITECTURE, the fair split).
local function fair_slots(M, hs, me)
  local dem = {}
  for i, x in ipairs(hs) do dem[i] = x.d end
  local level, extra = water_level(M, dem)
  local left = M
  for _, x in ipairs(hs) do
    local s = share_of(x.d, level, extra)
    x.f = math.floor(s + 1e-9)
    x.r = math.floor((s - x.f) * 1e6 + 0.5) -- in millionths: an exact order
    left = left - x.f
  end
  local ahead = 0
  for _, x in ipairs(hs) do
    if before(x, me) then ahead = ahead + 1 end
  end
  if ahead < left then return me.f + 1 end
  return me.f
end

-- In-flight SLOTS of a global max_inflight M (slots.c): one hash per
-- limit with per host o:HOST (slots it holds: what it reports holding, in
-- use or not, plus what it was just granted), d:HOST (its demand, slots) and
-- s:HOST (last seen, us); grace (us): no slot is granted before it; and hn,
-- the most hosts any caller expects to share the key.
-- INVARIANT: sum(o) <= M after every call (a grant takes only free slots,
-- a host reports no more than its o, a reap drops an o).
-- A host is granted up to its fair cap (fair_slots()); one above it lowers
-- its workers' cap to it and reports less as its requests end.
-- A host silent for the lease is reaped: it stopped admitting half the
-- lease after it sent its last answered call (its workers check, reserve.c),
-- and what it admitted ended by then (lease >= twice the longest request).
-- A missing hash on a server up for less than the lease may be a master
-- that restarted empty while hosts still use slots it does not know: it
-- grants nothing until the lease has passed since its start, or until hn
-- distinct hosts have reported what they hold (every host in the hash has
-- called since it was made): at most hn hosts share the key, so their o
-- then covers every slot in use.
local function slots(keys, args)
  local k = keys[1]
  local host = args[1]
  local M, lease = tonumber(args[2]), tonumber(args[3])
  local held, want, demand = tonumber(args[4]), tonumber(args[5]), tonumber(args[6])
  -- a caller that does not say how many hosts it expects ends no grace early
  local expect = tonumber(args[7]) or 1e15
  local now = now_us()
  local h = redis.call('HGETALL', k)
  local st = {}
  for i = 1, #h, 2 do st[h[i]] = h[i + 1] end
  local grace = tonumber(st['grace'])
  if grace == nil then
    local up = tonumber(string.match(redis.call('INFO', 'server'), 'uptime_in_seconds:(%d+)'))
    -- uptime is rounded down: the start it gives is late, the grace long
    if up == nil then grace = now + lease
    elseif up * 1000000 < lease then grace = now - up * 1000000 + lease
    else grace = 0 end
  end
  local hn = tonumber(st['hn'] or '0')
  if expect > hn then hn = expect end
  local out, live, reaped, _, hs = others(k, st, host, lease, now, demand)
  if now < grace and live >= hn then grace = 0 end
  local me = { n = host, d = demand, o = held }
  hs[#hs + 1] = me
  local cap = fair_slots(M, hs, me)
  local g = want
  if g > M - out - held then g = M - out - held end
  if g > cap - held then g = cap - held end
  if now < grace then g = 0 end
  if g < 0 then g = 0 end
  g = math.floor(g)
  local function s(x) return string.format('%.0f', x) end
  redis.call('HSET', k, 'grace', s(grace), 'hn', s(hn), 's:' .. host, s(now), 'o:' .. host, s(held + g),
    'd:' .. host, s(demand))
  local left = 0
  if now < grace then left = math.ceil((grace - now) / 1000) end
  return { g, live, M - out - held - g, held + g, cap, reaped, left }
end

-- Days since 1970-01-01 -> months since 1970-01 (proleptic Gregorian): the
-- twin of libquota/src/clock.c's month_of_day(), so that Redis and the hosts
-- count the same months (tests/global checks them against each other).
local function month_of_day(z)
  z = z + 719468
  local era = math.floor(z / 146097)
  local doe = z - era * 146097
  local yoe = math.floor((doe - math.floor(doe / 1460) + math.floor(doe / 36524) - math.floor(doe / 146096)) / 365)
  local y = yoe + era * 400
  local doy = doe - (365 * yoe + math.floor(yoe / 4) - math.floor(yoe / 100))
  local mp = math.floor((5 * doy + 2) / 153)
  local m = mp < 10 and mp + 3 or mp - 9
  if m <= 2 then y = y + 1 end
  return (y - 1970) * 12 + (m - 1)
end

-- A SPEND budget B (nano-USD) per UTC day or month (global.c): p (Redis'
-- period, by TIME), given (nano-USD granted or reported spent in it), and
-- for a host whose clock is already in the next period, ahead (its debt)
-- and ap (that period); s:HOST for the live count. Grants are final (no
-- lease): a host spends what it was given, even in an outage.
-- INVARIANT: given <= B after a grant (a grant takes at most B - given);
-- debt (spent beyond grants, reported into its period) may pass it.
local function spend(keys, args)
  local k = keys[1]
  local host = args[1]
  local B, month, ph = tonumber(args[2]), args[3] == '1', tonumber(args[4])
  local want, debt, back, lease = tonumber(args[5]), tonumber(args[6]), tonumber(args[7]), tonumber(args[8])
  local now = now_us()
  local pr = math.floor(now / 86400000000)
  if month then pr = month_of_day(pr) end
  local h = redis.call('HGETALL', k)
  local st = {}
  for i = 1, #h, 2 do st[h[i]] = h[i + 1] end
  local given, ahead, ap = tonumber(st['given'] or '0'), tonumber(st['ahead'] or '0'), tonumber(st['ap'] or '-1')
  if tonumber(st['p']) ~= pr then
    given = 0
    if ap == pr then given = ahead end
    ahead, ap = 0, -1
  end
  if ph == pr then
    given = given + debt - back
    if given < 0 then given = 0 end
  elseif ph > pr then
    if ap ~= ph then ahead, ap = 0, ph end
    ahead = ahead + debt
  end
  local _, live, reaped = others(k, st, host, lease, now, 0)
  local g = 0
  if ph == pr then
    g = want
    if g > B - given then g = B - given end
    if g < 0 then g = 0 end
  end
  given = given + g
  local function s(x) return string.format('%.0f', x) end
  redis.call('HSET', k, 'p', s(pr), 'given', s(given), 'ahead', s(ahead), 'ap', s(ap), 's:' .. host, s(now))
  return { g, live, B - given, given, pr, reaped }
end

redis.register_function('quotad_grant', grant)
redis.register_function('quotad_spend', spend)
redis.register_function('quotad_slots', slots)
