"""API keys, who the caller is, what it may use, and how much (see the README's Security section).

* `keys`: secrets (`aib_<key_id>_<random>`), stored as a SHA-256 hash, compared in constant time.
* `context`: the caller of the call being served, in a context variable every layer can read (and
  that the background runs a call starts inherit).
* `interceptor`: authentication, request rate and stream limits, for every RPC.
* `limits`: the counters behind an interface (in memory here; Redis for several replicas).
* `metering`: around every model call: allowed model, prompt size, token rate, budget reserve/settle.
* `scoped`: the store as the caller sees it: only its own conversations and reasoning sessions.
* `service`: KeyService.
"""
