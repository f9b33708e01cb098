"""A worker process for the torture test: ``python -m tests.torture.worker URL``."""

from __future__ import annotations

import logging
import sys

import tests.torture.sagas  # noqa: F401  (registers the saga classes)
from sagadsl import SagaEngine

if __name__ == "__main__":
    logging.basicConfig(level=logging.ERROR, format="worker %(process)d %(levelname)s %(message)s")
    engine = SagaEngine(sys.argv[1])
    engine.run_worker(concurrency=int(sys.argv[2]) if len(sys.argv) > 2 else 3, poll_interval=0.05,
                      install_signal_handlers=True)
