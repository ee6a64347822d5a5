"""``unitune.locks.file_lock`` between real processes: the second holder waits for the first."""

import subprocess
import sys
import time

from unitune.locks import file_lock

HOLD = """
import sys, time
from unitune.locks import file_lock
with file_lock(sys.argv[1]):
    print("held", flush=True)
    time.sleep(float(sys.argv[2]))
"""


def test_a_second_process_waits_for_the_lock(tmp_path):
    lock = tmp_path / "sub" / "store.db.lock"  # its folder is created
    holder = subprocess.Popen([sys.executable, "-c", HOLD, str(lock), "1.5"], stdout=subprocess.PIPE, text=True)
    try:
        assert holder.stdout.readline().strip() == "held"
        started = time.monotonic()
        with file_lock(lock):
            waited = time.monotonic() - started
        assert waited > 1.0  # the holder keeps it 1.5 s after saying so
    finally:
        holder.kill()
        holder.wait()
