"""Model loads per API key. A key allowed several models that do not fit in memory together could make every request
a load, and each load evicts what other keys use: at most `per_minute` loads a minute per key, counted per replica
as the loads are; the request that would start one more gets 429 `too_many_model_loads` with Retry-After. Only a
request that starts a load is counted: one that finds its model loaded, or loading for another request, starts none.
Every load is its requester's: a key pushing another's model out starts a load for each push, within its own limit,
so the other key needs no more restores than that (one more if it loaded first). A model the admin key's load evicted
comes back at nobody's charge. (An earlier rule charged a restore to the key whose load had evicted the model: two keys
then took turns for ever, each load the other's charge and none checked, and a key could arrange for its own reloads
to be charged to the key it pushed out.) The admin key and servers without keys are not limited (their caller has no
key id).
"""

from __future__ import annotations

import time
from collections.abc import Callable

from server.access.caller import Caller
from server.access.throttle import Throttle
from server.errors import APIError
from server.telemetry import prometheus


class LoadLimit:
    def __init__(self, per_minute: int, *, clock: Callable[[], float] = time.monotonic) -> None:
        """`per_minute` 0: no limit."""
        self._per_minute = per_minute
        self._loads = Throttle(max_events=per_minute, window_s=60.0, clock=clock) if per_minute > 0 else None

    def starting(self, caller: Caller, model_id: str, evicted_by: str | None) -> str:
        """Count the load of `model_id` that `caller`'s request is about to start, or refuse it (429); the key the
        load is for ("" for none). `evicted_by`: the key whose load evicted the model ("" the admin key's), if one
        did."""
        owner = caller.key_id or ""
        if self._loads is None or not owner:
            return owner
        if evicted_by == "":  # the admin key's load evicted it: nobody's charge
            return owner
        wait_s = self._loads.retry_after_s(owner)
        if wait_s is not None:
            prometheus.rate_limited.labels("model_loads").inc()
            raise APIError(
                429,
                f"this key started {self._per_minute} model loads in the last minute "
                f"(GGUFSTACK_MODEL_LOADS_PER_KEY_PER_MINUTE) and {model_id!r} is not loaded; retry in {wait_s} s, "
                "or use a model that is loaded",
                type="rate_limit_error",
                param="model",
                code="too_many_model_loads",
                headers={"Retry-After": str(wait_s)},
            )
        self._loads.count(owner)
        return owner
