"""API keys, who the caller is, what it may use, and how much (see the README's Security section).

* `keys`: secrets (`aib_<key_id>_<random>`), stored as a SHA-256 hash, compared in constant time.
* `context`: the `Caller` (who calls, its models and limits), handed from the interceptor to each
  handler, and passed explicitly from there.
* `interceptor`: authentication, request rate and stream limits, for every RPC.
* `limits`: the counters behind an interface, in this process (`MemoryLimiter`) or shared by
  replicas in Redis (`redis_limits`).
* `metering`: around every model call of a caller: prompt size, token rate, budget reserve/settle;
  composed into the registry by server/app.py.

KeyService itself is in server/services/keys.py; ownership (each key sees only its own conversations
and sessions) is orchestration's, by the caller each entry point takes.
"""
