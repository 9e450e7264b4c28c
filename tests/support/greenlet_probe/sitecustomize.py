"""Test probe: put this directory on PYTHONPATH with MILTERMAN_TEST_PROBE=DIR and the process answers
"how many greenlets are there now?" (objects the collector tracks, those made before ``gc.freeze``
aside) each time a test creates ``DIR/ask``, in ``DIR/answer``. A thread does it, so the process's
own event loop is not touched (nothing is monkey-patched)."""

import os
import threading
import time


def _probe(directory: str) -> None:
    import gc

    ask = os.path.join(directory, "ask")
    answer = os.path.join(directory, "answer")
    while True:
        time.sleep(0.02)
        if not os.path.exists(ask):
            continue
        os.unlink(ask)
        from greenlet import greenlet

        count = sum(1 for item in gc.get_objects() if isinstance(item, greenlet))
        with open(answer + ".tmp", "w") as handle:
            handle.write(str(count))
        os.rename(answer + ".tmp", answer)


if os.environ.get("MILTERMAN_TEST_PROBE"):
    threading.Thread(target=_probe, args=(os.environ["MILTERMAN_TEST_PROBE"],), daemon=True).start()
