"""`vast-queue-scaler demo` (`make demo`): the whole system on this machine, no GPU or Vast account.

Modules: load (load shapes), queue (Redis or an embedded server), producer (plays the load into a
stream), observe (samples queue, controller and emulator), live (the terminal view), report
(summary.json and timeline.png), run (the orchestration).
"""

from __future__ import annotations

from typing import Any


def main(**options: Any) -> int:
    """Run the demo (see controller.demo.run.main for the options); returns the exit code."""
    # Imported here: the demo's own dependencies (rich, matplotlib) are an extra the CLI may lack.
    from controller.demo.run import main as run_main

    return run_main(**options)
