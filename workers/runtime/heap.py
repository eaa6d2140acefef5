"""Keep garbage-collection pauses off the scoring path.

A full (generation 2) collection walks every object the collector tracks, holding the GIL:
once torch and its compiler are imported that is over half a million objects, 250-350 ms
on a 2-core machine, and no thread scores meanwhile. A compile (a promoted version's
warm-up) makes enough new objects to start one or two such collections, which is where
the slowest requests across a switch came from (`scoring bench switch` reports each one).

Nearly all of those objects are modules, classes and functions that live as long as the
process. `freeze_imported_heap()` imports the compiler stack a promoted version may need,
collects once, and freezes what exists (`gc.freeze`): later collections walk only what
came after it (models, their compiled code, requests in flight).

A frozen object is never collected, so this runs once per process, before any model is
loaded: a model frozen with the heap would stay in memory after its release.
"""

from __future__ import annotations

import atexit
import gc
import importlib
import logging
import threading
import time

log = logging.getLogger(__name__)

# What the first torch.compile in a process imports (dynamo, inductor's lowering and
# decompositions): imported before the freeze, it is not walked by every collection after.
COMPILER_MODULES = (
    "torch._dynamo",
    "torch._inductor.compile_fx",
    "torch._inductor.decomposition",
    "torch._inductor.lowering",
)

_lock = threading.Lock()
_frozen = False


def freeze_imported_heap() -> int:
    """Import the compiler, collect, then freeze the heap.

    Returns how many objects were frozen; 0 when this process froze its heap before (the
    first call wins, later ones do nothing). Blocks for the compiler's import and one full
    collection (about 1.5 s on a 2-core machine). A compiler that fails to import is
    logged and left to fail where a compiled backend is asked for.
    """
    global _frozen
    with _lock:
        if _frozen:
            return 0
        began = time.perf_counter()
        for module in COMPILER_MODULES:
            try:
                importlib.import_module(module)
            except Exception as exc:  # noqa: BLE001 - compiled backends will say why
                log.warning("could not preload %s (%s: %s)", module, type(exc).__name__, exc)
                break
        gc.collect()
        gc.freeze()
        # unfrozen again at exit, so that the interpreter's last collections see the heap
        # (extension modules such as triton's report what is never freed as leaked)
        atexit.register(gc.unfreeze)
        _frozen = True
        frozen = gc.get_freeze_count()
    log.info(
        "froze %d objects of the imported heap in %.2f s (collections skip them)",
        frozen,
        time.perf_counter() - began,
    )
    return frozen
