"""Starts a Dask cluster-manager class for a flowrun flow run and keeps it
until the flow tells it to stop.

argv[1] is JSON: {"class": "pkg.Class", "kwargs": {...}, "adapt": {...} or
null, "config": {...}}. The first line on stdout is JSON, {"address": ...}
or {"error": ...}. Then stdin carries JSON commands, one a line:
{"op": "scale", "n": 3} or {"op": "close"}. The cluster is closed on
"close" and when stdin ends (the flow's process is gone).
"""

import importlib
import json
import os
import sys


def describe(e):
    """The exception and its causes, which often hold the real reason."""
    parts = []
    while e is not None and len(parts) < 5:
        parts.append("%s: %s" % (type(e).__name__, e))
        e = e.__cause__ or e.__context__
    return "; caused by ".join(parts)


def main():
    # stdout is the channel to the flow; anything else that prints (the
    # cluster's libraries) goes to stderr.
    channel = os.fdopen(os.dup(1), "w")
    os.dup2(2, 1)

    def reply(message):
        channel.write(json.dumps(message) + "\n")
        channel.flush()

    spec = json.loads(sys.argv[1])
    path = spec["class"]
    module_name, _, class_name = path.rpartition(".")
    if not module_name:
        reply({"error": "%r is not an import path such as 'distributed.LocalCluster'" % path})
        return 2
    try:
        if spec.get("config"):
            import dask

            dask.config.set(spec["config"])
        module = importlib.import_module(module_name)
    except Exception as e:
        reply({"error": "cannot import module %r: %s" % (module_name, describe(e))})
        return 2
    cls = getattr(module, class_name, None)
    if cls is None:
        reply({"error": "module %r has no attribute %r" % (module_name, class_name)})
        return 2
    try:
        cluster = cls(**spec["kwargs"])
    except Exception as e:
        reply({"error": "%s(**cluster_kwargs) failed: %s" % (path, describe(e))})
        return 2
    try:
        if spec.get("adapt") is not None:
            cluster.adapt(**spec["adapt"])
        reply({"address": cluster.scheduler_address})
        for line in sys.stdin:
            command = json.loads(line)
            if command.get("op") == "scale":
                cluster.scale(command["n"])
            elif command.get("op") == "close":
                break
    except Exception as e:
        reply({"error": "%s: %s" % (path, describe(e))})
    finally:
        cluster.close()
    return 0


sys.exit(main())
