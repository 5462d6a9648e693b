"""Where the guard keeps what every worker must agree on: each client's and source block's token bucket, lifetime
query count and rung on the response ladder, and which alerts were already raised.

* ``redis://HOST:PORT[/DB]``: one Lua script per request (atomic: two workers cannot both spend a client's last
  token), the time taken from Redis itself so that workers' clocks do not matter.
* ``memory``: the same logic in this process, for a single worker (tests, a laptop).

The detectors' per-query state (recent inputs, distances) stays in each worker: each sees its share of a client's
stream, which is a sample of it; what they conclude (flags, alarms, rungs) is shared here.
"""

from __future__ import annotations

import asyncio
import time
from dataclasses import dataclass

OK, RATE_LIMITED, BLOCKED = 0, 1, 2

_ADMIT = """
local lc = tonumber(redis.call('GET', KEYS[3]) or '0')
local lb = tonumber(redis.call('GET', KEYS[4]) or '0')
local level = math.max(lc, lb)
if level >= 3 then return {2, 0, level} end
local rate, burst, cost = tonumber(ARGV[1]), tonumber(ARGV[2]), tonumber(ARGV[3])
if level >= 2 then
  rate = rate * tonumber(ARGV[4])
  burst = math.max(1, math.floor(burst * tonumber(ARGV[4])))
end
local t = redis.call('TIME')
local now = tonumber(t[1]) + tonumber(t[2]) / 1000000
local b = redis.call('HMGET', KEYS[1], 'tokens', 'ts')
local tokens = tonumber(b[1]) or burst
local ts = tonumber(b[2]) or now
tokens = math.min(burst, tokens + math.max(0, now - ts) * rate)
if tokens < cost then
  redis.call('HSET', KEYS[1], 'tokens', tostring(tokens), 'ts', tostring(now))
  redis.call('EXPIRE', KEYS[1], 86400)
  return {1, 0, level}
end
redis.call('HSET', KEYS[1], 'tokens', tostring(tokens - cost), 'ts', tostring(now))
redis.call('EXPIRE', KEYS[1], 86400)
return {0, redis.call('INCRBY', KEYS[2], cost), level}
"""

_RAISE = """
local c = tonumber(redis.call('GET', KEYS[1]) or '0')
local want = tonumber(ARGV[1])
if want > c then redis.call('SET', KEYS[1], want) return want end
return c
"""


@dataclass(frozen=True)
class Admission:
    status: int  # OK, RATE_LIMITED, BLOCKED
    count: int  # the client's lifetime queries, this request included (0 unless admitted)
    level: int  # the highest rung of the client and its source block


class MemoryStore:
    """One worker's store (no sharing): the same semantics as Redis's."""

    def __init__(self) -> None:
        self._buckets: dict[str, tuple[float, float]] = {}
        self._counts: dict[str, int] = {}
        self._levels: dict[str, int] = {}
        self._once: set[str] = set()
        self._lock = asyncio.Lock()

    async def admit(self, client: str, block: str, rate: float, burst: int, cost: int, tight: float) -> Admission:
        async with self._lock:
            level = max(self._levels.get(f"level:c:{client}", 0), self._levels.get(f"level:b:{block}", 0))
            if level >= 3:
                return Admission(BLOCKED, 0, level)
            if level >= 2:
                rate, burst = rate * tight, max(1, int(burst * tight))
            now = time.monotonic()
            tokens, ts = self._buckets.get(client, (float(burst), now))
            tokens = min(burst, tokens + max(0.0, now - ts) * rate)
            if tokens < cost:
                self._buckets[client] = (tokens, now)
                return Admission(RATE_LIMITED, 0, level)
            self._buckets[client] = (tokens - cost, now)
            self._counts[client] = self._counts.get(client, 0) + cost
            return Admission(OK, self._counts[client], level)

    async def raise_level(self, key: str, level: int) -> int:
        async with self._lock:
            self._levels[key] = max(self._levels.get(key, 0), level)
            return self._levels[key]

    async def once(self, key: str) -> bool:
        if key in self._once:
            return False
        self._once.add(key)
        return True

    async def close(self) -> None:
        pass


class RedisStore:
    def __init__(self, url: str, prefix: str = "airlock:guard:") -> None:
        import redis.asyncio as redis

        self.url, self.prefix = url, prefix
        self._r = redis.from_url(url)
        self._admit = self._r.register_script(_ADMIT)
        self._raise = self._r.register_script(_RAISE)

    async def admit(self, client: str, block: str, rate: float, burst: int, cost: int, tight: float) -> Admission:
        p = self.prefix
        keys = [f"{p}bucket:{client}", f"{p}count:{client}", f"{p}level:c:{client}", f"{p}level:b:{block}"]
        status, count, level = await self._admit(keys=keys, args=[rate, burst, cost, tight])
        return Admission(int(status), int(count), int(level))

    async def raise_level(self, key: str, level: int) -> int:
        return int(await self._raise(keys=[self.prefix + key], args=[level]))

    async def once(self, key: str) -> bool:
        return bool(await self._r.set(self.prefix + "once:" + key, 1, nx=True, ex=30 * 86400))

    async def close(self) -> None:
        await self._r.aclose()


def from_url(url: str):
    return MemoryStore() if url == "memory" else RedisStore(url)
