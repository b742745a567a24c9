"""What a worker's cyclic garbage collector frees, by type (docs/performance.md, fourth round).

Not part of the worker: put this directory first on a benchmark worker's path, e.g.

    python -m streamer.benchmark --quick --skip s3 --skip latency --skip baseline --events 60000 \\
        --worker-env PYTHONPATH=$PWD/scripts/gcprobe:$PWD

25 s after a worker starts (GCPROBE_AFTER_S), everything the collector frees for 4 s
(GCPROBE_FOR_S) is kept instead (`gc.DEBUG_SAVEALL`), counted by type and written to
$GCPROBE_OUT/gcprobe-<pid>.txt (default /tmp). Objects freed by reference counting never
reach the collector, so what is listed is what forms reference cycles: the work the young
collections do on top of reference counting.
"""

import collections
import gc
import os
import sys
import threading
import time

if "worker" in sys.argv:
    def _probe() -> None:
        time.sleep(float(os.environ.get("GCPROBE_AFTER_S", "25")))
        gc.set_debug(gc.DEBUG_SAVEALL)
        time.sleep(float(os.environ.get("GCPROBE_FOR_S", "4")))
        gc.set_debug(0)
        garbage = list(gc.garbage)
        gc.garbage.clear()
        counts = collections.Counter(f"{type(o).__module__}.{type(o).__qualname__}" for o in garbage)
        path = os.path.join(os.environ.get("GCPROBE_OUT", "/tmp"), f"gcprobe-{os.getpid()}.txt")
        with open(path, "w") as out:
            out.write(f"total {len(garbage)}\n")
            for name, n in counts.most_common(40):
                out.write(f"{n:8d} {name}\n")

    threading.Thread(target=_probe, daemon=True, name="gcprobe").start()
