"""Ray plumbing: start or join Ray on demand, create the shard actors, and turn Ray's
errors into ours (a user's ValueError raised inside an actor is that ValueError here;
a dead actor is a :class:`ShardUnavailableError` naming the shard)."""
from __future__ import annotations

import os
import pickle
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
    return _cls(ray, ReaderGroup).options(**opts).remote(paths, device, threads, driver_nice())


def driver_nice():
    """This process's niceness, which the actors a caller waits for take
    (:func:`actors.take_priority`); None where the platform has no such call."""
    try:
        return os.getpriority(os.PRIO_PROCESS, 0)
    except (OSError, AttributeError):
        return None


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


def acquire_readers(paths: list, per_shard: int, opts: dict, threads, per_reader=None,
                    compiled: bool = False) -> tuple:
    """(key, per shard the list of its ``per_shard`` reader actors (a group's actors
    are shared by its shards)); release with :func:`release_readers`. ``compiled``:
    this user searches through the pool's compiled graph (:func:`fan_graph`), which
    lives while such a user holds the pool (its actors poll their channels)."""
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
            entry = _pools[key] = [handles, 0, None, 0]  # actors, users, graph, its users
        entry[1] += 1
        entry[3] += bool(compiled)
        return key, entry[0]


def release_readers(key, compiled: bool = False) -> None:
    graph = None
    with _pools_lock:
        entry = _pools.get(key)
        if entry is None:
            return
        entry[1] -= 1
        entry[3] -= bool(compiled)
        if entry[3] <= 0 and entry[2] is not None:
            graph, entry[2] = entry[2], None  # no user left: torn down (a broken one too)
        if entry[1] <= 0:
            del _pools[key]
    if graph:
        graph.close()
    if entry[1] > 0:
        return
    kill(list({id(h): h for hs in entry[0] for h in hs}.values()))


def fan_graph(key):
    """The pool's :class:`FanGraph` (compiled on first use), or None: a pool with
    replicas (``readers`` > 1), or whose graph broke or could not be compiled."""
    with _pools_lock:
        entry = _pools.get(key)
        if entry is None or entry[2] is False or entry[3] <= 0:
            return None
        if entry[2] is None:
            actors = list({id(h): h for hs in entry[0] for h in hs}.values())
            if any(len(hs) > 1 for hs in entry[0]):
                entry[2] = False
                return None
            try:
                entry[2] = FanGraph(actors)
            except Exception:  # an old Ray, an actor that died meanwhile: plain calls
                entry[2] = False
                return None
        return entry[2] if not entry[2].broken else None


class FanGraph:
    """One search fanned out to every reader actor of a pool through a Ray compiled
    graph (``ray.dag``, ``experimental_compile``): the driver writes the request to
    shared-memory channels that the actors' loops read, instead of submitting one
    actor task per actor (README, Scale-out measurements: the round trip it saves).
    Every actor of the pool is in the graph; one with nothing to do gets ``None``.

    One execution at a time (a search that finds the graph busy, from another thread,
    takes plain actor calls). An error raised in an actor comes back as that error;
    a dead actor breaks the graph for good (Ray shuts it down): the call, and every
    later one, goes through plain actor calls, which restart the actor or raise
    :class:`ShardUnavailableError`."""

    def __init__(self, actors: list):
        from ray.dag import InputNode, MultiOutputNode

        with InputNode() as inp:
            dag = MultiOutputNode([a.run_graph.bind(inp, i) for i, a in enumerate(actors)])
        self.index = {id(a): i for i, a in enumerate(actors)}
        self.broken = False
        self._lock = threading.Lock()
        self._dag = dag.experimental_compile()

    def run(self, work: dict):
        """``work``: {actor index: [(shard, args)]} -> {actor index: its answers}, or
        None when the graph cannot serve this call (busy, or broken now)."""
        from ray.exceptions import RayError, RayTaskError

        if self.broken or not self._lock.acquire(blocking=False):
            return None
        try:
            refs = self._dag.execute(work)
            out, error, dead = {}, None, False
            for i, ref in enumerate(refs):  # each result read once, errors or not
                try:
                    r = ref.get(timeout=-1)  # a long search is no timeout
                except RayTaskError as e:
                    cause = getattr(e, "cause", None)
                    if isinstance(cause, Exception) and not isinstance(cause, RayError):
                        error = error or cause  # raised by our code in the actor
                    else:  # Ray's own (a channel of a restarted actor): the graph is gone
                        dead = True
                    continue
                except Exception:  # an actor died, a channel closed: the graph is gone
                    dead = True
                    continue
                if i in work:
                    out[i] = r
        except Exception:
            dead = True
        finally:
            self._lock.release()
        if dead:
            self.close()
            return None
        if error is not None:
            raise error
        return out

    def close(self) -> None:
        self.broken = True
        try:
            self._dag.teardown()
        except Exception:
            pass


# reader calls whose arguments and answers are small: one pickle each way
# (ReaderGroup.run_packed); bulk reads (get, to_table) keep Ray's zero-copy buffers
_PACKED = ("search", "count", "indexes")


def call_reader(handle, method: str, calls: list, merged: bool = False):
    """Submit ``ReaderGroup.run(method, calls, merged)`` on ``handle``; small calls
    travel as one pickle each way: Ray gives every NumPy array of a structure a buffer
    of its own, which costs more than a batch-1 search's arrays are worth. Read the
    answers with :func:`answers`."""
    if method in _PACKED:
        return handle.run_packed.remote(pickle.dumps((method, calls, merged), protocol=pickle.HIGHEST_PROTOCOL))
    return handle.run.remote(method, calls, merged)


def answers(results: list, method) -> list:
    """The answers of :func:`call_reader`'s calls, as ``ReaderGroup.run`` returns them."""
    return [pickle.loads(r) for r in results] if method in _PACKED else results


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
