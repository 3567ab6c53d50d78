"""One writer a stage: `<run_dir>/_locks/<output>.json`, held while a stage checks, empties and
writes its folder (`stage_lock`), on a local disk, NFS or an object store."""

from __future__ import annotations

import contextlib
import json
import os
import posixpath
import socket
import sys
import threading
import time
import uuid
from typing import Any, Iterator

import fsspec

from hsdpo.rundir import LOCKS, _fs, _is_local, join, local_path


class StageBusy(RuntimeError):
    """Another process holds the stage's lock: it is writing that folder now."""


HEARTBEAT_S = 20.0  # how often a holder rewrites its lock
STALE_S = 120.0  # a lock not rewritten for this long is a killed holder's: taken over


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except (PermissionError, OSError):
        return True
    return True


def _pid_namespace() -> str:
    """Which processes a pid names: two containers can share a host name (host networking) and
    not their pids."""
    try:
        return os.readlink("/proc/self/ns/pid")
    except OSError:
        return ""


def _stale(holder: dict[str, Any], now: float) -> str | None:
    """Why a lock's holder is gone, or None while it may be running."""
    if holder.get("host") == socket.gethostname() and holder.get("pidns", "") == _pid_namespace() \
            and isinstance(holder.get("pid"), int) and holder["pid"] != os.getpid() and not _alive(holder["pid"]):
        return f"process {holder['pid']} on this host has exited"
    beat = holder.get("heartbeat")
    if not isinstance(beat, (int, float)) or now - beat > STALE_S:
        return f"its last heartbeat is over {STALE_S:.0f} s old"
    return None


def _create(fs: fsspec.AbstractFileSystem, p: str, data: bytes) -> bool:
    """Create file `p` holding `data` unless it exists; True when this call created it. Readers
    never see it part-written: locally (and on NFS) the record is written under a private name and
    hard-linked into place (`link` fails when the name exists); on S3 and GCS an exclusive upload
    (`open(..., "xb")`: If-None-Match, ifGenerationMatch=0) is one request. A store without
    exclusive creates falls back to check-then-write."""
    if _is_local(fs):
        tmp = f"{p}.{uuid.uuid4().hex[:8]}.tmp"
        with open(tmp, "wb") as f:
            f.write(data)
        try:
            os.link(tmp, p)
            return True
        except FileExistsError:
            return False
        except OSError:  # no hard links here (some FUSE and SMB mounts): O_EXCL, read back with retries
            pass
        finally:
            os.unlink(tmp)
    try:
        with fs.open(p, "xb") as f:
            f.write(data)
        return True
    except FileExistsError:
        return False
    except (ValueError, NotImplementedError):  # no exclusive create on this store
        if fs.exists(p):
            return False
        fs.pipe_file(p, data)
        return True


def _overwrite(fs: fsspec.AbstractFileSystem, p: str, data: bytes) -> None:
    """Replace file `p` whole (a rename locally; one PUT on an object store)."""
    if _is_local(fs):
        tmp = f"{p}.{uuid.uuid4().hex[:8]}.tmp"
        with open(tmp, "wb") as f:
            f.write(data)
        os.replace(tmp, p)
    else:
        fs.pipe_file(p, data)


def _read_lock(fs: fsspec.AbstractFileSystem, p: str) -> dict[str, Any] | None:
    """The holder's record; None when the lock is gone. A record that does not parse (a store
    without atomic creates, caught mid-write) is read again; still unreadable after two seconds (cut
    short by a full disk, say) it reads as a holder with no heartbeat: stale."""
    for attempt in range(11):
        try:
            raw = fs.cat_file(p)
        except FileNotFoundError:
            return None
        try:
            holder = json.loads(raw)
            if isinstance(holder, dict):
                return holder
        except ValueError:
            pass
        if attempt < 10:
            time.sleep(0.2)
    return {}


def lock_holder(run_dir: str, output: str) -> dict[str, Any] | None:
    """The record of the run holding `output`'s lock now; None when nobody does (or the lock is a
    killed run's, which the next run takes over)."""
    fs, p = _fs(join(local_path(run_dir), LOCKS, f"{output}.json"))
    holder = _read_lock(fs, p)
    return holder if holder is not None and _stale(holder, time.time()) is None else None


@contextlib.contextmanager
def stage_lock(run_dir: str, output: str) -> Iterator[None]:
    """Hold `<run_dir>/_locks/<output>.json` while a stage checks, empties and writes its folder, so
    that a second run of the same stage on the same run dir (a job submitted twice) is refused with
    one line naming the holder, instead of emptying the folder under the first.

    Of two runs starting at once exactly one creates the lock (`_create`: a hard link locally and
    on NFS, an exclusive upload on S3 and GCS). The holder rewrites its record every `HEARTBEAT_S` while it
    runs. A lock left by a killed run is taken over when its process is gone (same host) or its
    heartbeat is older than `STALE_S` (another host: a job re-submitted after its head node was
    lost waits up to two minutes; remove the lock file to go on at once)."""
    path = join(local_path(run_dir), LOCKS, f"{output}.json")
    fs, p = _fs(path)
    fs.makedirs(posixpath.dirname(p), exist_ok=True)
    me = {"host": socket.gethostname(), "pidns": _pid_namespace(), "pid": os.getpid(), "token": uuid.uuid4().hex,
          "command": " ".join(sys.argv)[:300], "started": time.time()}

    def record() -> bytes:
        return json.dumps({**me, "heartbeat": time.time()}).encode()

    stop = threading.Event()

    def beat() -> None:
        while not stop.wait(HEARTBEAT_S):
            try:
                if (_read_lock(fs, p) or {}).get("token") != me["token"]:
                    print(f"[hsdpo] warning: the lock {path} was taken over by another run", file=sys.stderr)
                    return
                _overwrite(fs, p, record())
            except Exception as err:  # noqa: BLE001 -- a missed beat is retried; the stage goes on
                print(f"[hsdpo] warning: could not renew the lock {path}: {err}", file=sys.stderr)

    thread = threading.Thread(target=beat, name=f"hsdpo-lock-{output}", daemon=True)
    # from the first attempt on: a Ctrl-C that lands just after the lock file is created (inside
    # _create, or before the heartbeat starts) still removes it; the file says whose it is
    try:
        for _ in range(5):
            if _create(fs, p, record()):
                break
            holder = _read_lock(fs, p)
            if holder is None:  # released between the two calls
                continue
            why = _stale(holder, time.time())
            if why is None:
                started = holder.get("started")
                since = time.strftime("%Y-%m-%d %H:%M:%S", time.localtime(started)) if isinstance(started, (int, float)) else "?"
                raise StageBusy(f"{output} in {run_dir} is being written by another run (host {holder.get('host')}, "
                                f"pid {holder.get('pid')}, since {since}: {holder.get('command', '?')}); wait for it, "
                                f"or remove {path} if that run is gone (a lock not renewed for {STALE_S:.0f} s is taken over)")
            print(f"[hsdpo] taking over the lock {path}: {why}", file=sys.stderr, flush=True)
            if _read_lock(fs, p) == holder:  # not taken over by someone else meanwhile
                with contextlib.suppress(FileNotFoundError):
                    fs.rm(p)
        else:
            raise StageBusy(f"could not take the lock {path}: other runs keep taking it")
        thread.start()
        yield
    finally:
        stop.set()
        if thread.ident is not None:  # started
            thread.join()
        with contextlib.suppress(Exception):
            if (_read_lock(fs, p) or {}).get("token") == me["token"]:
                fs.rm(p)
