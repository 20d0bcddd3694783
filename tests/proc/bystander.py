"""A thread started at import time, as a monitoring SDK or a client library does.

The kernel may hand a process-directed signal to any thread that does not block
it; this one is there to receive it.
"""

import threading
import time


def _idle() -> None:
    while True:
        time.sleep(3600)


threading.Thread(target=_idle, name="bystander", daemon=True).start()
