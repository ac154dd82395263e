"""mitogen's side of `make bench`: one workload per invocation, timings as
JSON on stdout. Run by tests/src/bin/spore-bench.rs in a private
virtualenv; never on its own.

    mitogen_bench.py spawn REPS
    mitogen_bench.py calls N [via]
    mitogen_bench.py ssh REPS CONFIG CALLS
    mitogen_bench.py fanout N
    mitogen_bench.py rss CALLS
    mitogen_bench.py shutdown WIDTH DEPTH [hung]
"""

import json
import logging
import os
import sys
import time

import mitogen.core
import mitogen.master
import mitogen.utils

logging.disable(logging.CRITICAL)


def noop():
    return None


def rss_kib(pid):
    with open("/proc/%d/status" % pid) as f:
        for line in f:
            if line.startswith("VmRSS:"):
                return int(line.split()[1])
    return 0


def child_pid():
    return os.getpid()


def sleeper(secs):
    time.sleep(secs)


def main():
    what = sys.argv[1]
    broker = mitogen.master.Broker()
    router = mitogen.master.Router(broker)
    out = {}
    try:
        if what == "spawn":
            samples = []
            for _ in range(int(sys.argv[2])):
                t = time.perf_counter()
                ctx = router.local()
                ctx.call(noop)
                samples.append(time.perf_counter() - t)
                ctx.shutdown(wait=True)
            out["samples"] = samples
        elif what == "calls":
            n = int(sys.argv[2])
            ctx = router.local()
            if len(sys.argv) > 3:
                ctx = router.local(via=ctx)
            ctx.call(noop)
            t = time.perf_counter()
            for _ in range(n):
                ctx.call(noop)
            out["per_call"] = (time.perf_counter() - t) / n
        elif what == "ssh":
            reps, config, calls = int(sys.argv[2]), sys.argv[3], int(sys.argv[4])
            samples = []
            for _ in range(reps):
                t = time.perf_counter()
                ctx = router.ssh(hostname="spore-test", ssh_args=["-F", config], python_path=sys.executable)
                ctx.call(noop)
                samples.append(time.perf_counter() - t)
                if calls and len(samples) == reps:
                    t = time.perf_counter()
                    for _ in range(calls):
                        ctx.call(noop)
                    out["per_call"] = (time.perf_counter() - t) / calls
                ctx.shutdown(wait=True)
            out["samples"] = samples
        elif what == "fanout":
            n = int(sys.argv[2])
            t = time.perf_counter()
            ctxs = [router.local() for _ in range(n)]
            pids = [c.call(child_pid) for c in ctxs]
            out["seconds"] = time.perf_counter() - t
            out["rss_kib"] = sum(rss_kib(p) for p in pids) + rss_kib(os.getpid())
        elif what == "rss":
            ctx = router.local()
            pid = ctx.call(child_pid)
            out["after_connect_kib"] = rss_kib(pid)
            for _ in range(int(sys.argv[2])):
                ctx.call(noop)
            out["after_calls_kib"] = rss_kib(pid)
        elif what == "shutdown":
            width, depth = int(sys.argv[2]), int(sys.argv[3])
            hung = len(sys.argv) > 4
            level = [None]
            allc = []
            for _ in range(depth):
                nxt = []
                for parent in level:
                    for _ in range(width):
                        c = router.local(via=parent) if parent else router.local()
                        nxt.append(c)
                allc.extend(nxt)
                level = nxt
            for c in allc:
                c.call(noop)
            if hung:
                for c in allc[:: max(1, len(allc) // 10)]:
                    c.call_async(sleeper, 1000)
            t = time.perf_counter()
            broker.shutdown()
            broker.join()
            out["seconds"] = time.perf_counter() - t
            out["contexts"] = len(allc)
            broker = None
    finally:
        if broker is not None:
            broker.shutdown()
            broker.join()
    print(json.dumps(out))


if __name__ == "__main__":
    main()
