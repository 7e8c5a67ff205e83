"""Ray plumbing: start or join Ray on demand, create the shard actors, and turn Ray's
errors into ours (a user's ValueError raised inside an actor is that ValueError here;
a dead actor is a :class:`ShardUnavailableError` naming the shard)."""
from __future__ import annotations

import os
import threading

from .actors import ReaderGroup, ShardWriter


class ShardUnavailableError(RuntimeError):
    """A shard's actor died (and, for reads, could not be restarted in time). The call
    that raised it returned nothing: no partial result, and for writes nothing
    committed (the message says which version the collection is at)."""


READER_DEFAULTS = {"num_cpus": 0, "max_restarts": 3, "max_task_retries": 3, "max_concurrency": 4,
                   "scheduling_strategy": "SPREAD"}
# Writes are never retried by Ray: a write that died is rolled back by the driver.
WRITER_DEFAULTS = {"num_cpus": 0, "max_restarts": 3, "max_task_retries": 0, "scheduling_strategy": "SPREAD"}
_ALLOWED = {"num_cpus", "num_gpus", "memory", "resources", "scheduling_strategy", "max_restarts",
            "max_task_retries", "max_concurrency", "runtime_env", "name", "namespace", "lifetime",
            "label_selector", "accelerator_type"}
_remote_classes: dict = {}


def ray_module():
    """``ray``, started locally if no cluster is connected (``ray.init()`` joins the
    cluster that ``RAY_ADDRESS`` or a local ``ray start`` names)."""
    try:
        import ray
    except ImportError as e:
        raise ImportError("nestvec.distributed needs Ray: pip install 'nestvec[ray]'") from e
    if not ray.is_initialized():
        ray.init(include_dashboard=False, ignore_reinit_error=True,
                 logging_level=os.environ.get("NESTVEC_RAY_LOG_LEVEL", "WARNING"))
    return ray


def options(defaults: dict, given, what: str) -> dict:
    if given is None:
        given = {}
    if not isinstance(given, dict):
        raise TypeError(f"{what}: expected a dict of Ray actor options, got {type(given).__name__}")
    bad = sorted(set(given) - _ALLOWED)
    if bad:
        raise ValueError(f"{what}: unknown Ray actor options {bad}; allowed: {sorted(_ALLOWED)}")
    return {**defaults, **given}


def _cls(ray, cls):
    rc = _remote_classes.get(cls)
    if rc is None:
        rc = _remote_classes[cls] = ray.remote(cls)
    return rc


def writer(path: str, opts: dict, merge_policy=None):
    ray = ray_module()
    return _cls(ray, ShardWriter).options(**opts).remote(path, merge_policy)


def reader(paths: dict, opts: dict, device=None, threads=None):
    """A reader actor for the shards ``{shard: path}``."""
    ray = ray_module()
    return _cls(ray, ReaderGroup).options(**opts).remote(paths, device, threads)


def reader_groups(shards: int, per_reader) -> list:
    """Shards per reader actor: ``per_reader`` shards each, or (None) the shards
    spread over one actor per alive node of the cluster (``SPREAD`` places them)."""
    if per_reader is None:
        ray = ray_module()
        nodes = sum(1 for n in ray.nodes() if n.get("Alive"))
        groups = max(1, min(shards, nodes))
    else:
        groups = -(-shards // per_reader)
    return [list(range(g, shards, groups)) for g in range(groups)]


# Reader actors are shared by every handle of this driver on the same shards and
# options: they serve any version a request names, so a writer's handle and read-only
# handles on the same root cost one set of processes.
_pools: dict = {}
_pools_lock = threading.Lock()


def acquire_readers(paths: list, per_shard: int, opts: dict, threads, per_reader=None) -> tuple:
    """(key, per shard the list of its ``per_shard`` reader actors (a group's actors
    are shared by its shards)); release with :func:`release_readers`."""
    ray = ray_module()
    key = (ray.get_runtime_context().get_job_id(), tuple(paths), per_shard, repr(sorted(opts.items())), threads,
           per_reader)
    with _pools_lock:
        entry = _pools.get(key)
        if entry is None:
            handles = [None] * len(paths)
            for group in reader_groups(len(paths), per_reader):
                hs = [reader({s: paths[s] for s in group}, opts, None, threads) for _ in range(per_shard)]
                for s in group:
                    handles[s] = hs
            entry = _pools[key] = [handles, 0]
        entry[1] += 1
        return key, entry[0]


def release_readers(key) -> None:
    with _pools_lock:
        entry = _pools.get(key)
        if entry is None:
            return
        entry[1] -= 1
        if entry[1] > 0:
            return
        del _pools[key]
    kill(list({id(h): h for hs in entry[0] for h in hs}.values()))


def gather(refs: list, shards: list, what: str):
    """ray.get of one call per shard (or per list of shards a reader actor serves);
    errors raised as ours, after every call ended
    (no call is left running behind an exception)."""
    import ray
    from ray.exceptions import RayActorError, RayTaskError

    try:
        return ray.get(refs)  # one wait for all of them: the common case
    except (RayTaskError, RayActorError):
        pass  # sort out which call failed and why, waiting for the others
    out, first = [None] * len(refs), None
    for i, ref in enumerate(refs):
        try:
            out[i] = ray.get(ref)
        except RayTaskError as e:
            cause = getattr(e, "cause", None)
            if isinstance(cause, RayActorError):
                first = first or _dead(shards[i], what, cause)
            else:
                first = first or (cause if isinstance(cause, BaseException) else e)
        except RayActorError as e:
            first = first or _dead(shards[i], what, e)
    if first is not None:
        raise first
    return out


def _dead(shard, what, e) -> ShardUnavailableError:
    msg = str(e).strip().splitlines()[0] if str(e).strip() else type(e).__name__
    if isinstance(shard, (list, tuple)):  # a reader actor serving several shards
        who = f"shard {shard[0]}" if len(shard) == 1 else f"shards {', '.join(map(str, shard))}"
        return ShardUnavailableError(f"{who}: their {what} actor died ({type(e).__name__}: {msg[:200]})")
    return ShardUnavailableError(f"shard {shard}: its {what} actor died ({type(e).__name__}: {msg[:200]})")


def kill(handles) -> None:
    try:
        import ray
    except ImportError:
        return
    if not ray.is_initialized():
        return
    for h in handles:
        try:
            ray.kill(h, no_restart=True)
        except Exception:
            pass
