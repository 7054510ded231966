"""A decoder that never finishes (for the test that kills the parent of the decode workers)."""

import os
import time
from pathlib import Path


def never_finishes(path, choose):
    """Mark this worker's pid in $FAULTS_PID_DIR, then sleep far longer than the test waits."""
    Path(os.environ["FAULTS_PID_DIR"], str(os.getpid())).touch()
    time.sleep(120)
    raise RuntimeError("unreachable")
