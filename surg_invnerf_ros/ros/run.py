"""The one `main` of every node executable: init, build the node, spin, shut down in order.

rclpy's own signal handlers shut the context down from inside the C layer, while the node's
timers, render threads and executor may still be using it; a SIGTERM then surfaces as
`RCLError: the given context is not valid` (or "publisher's context is invalid") from whichever
call came first, and the process exits 1 with a traceback. `run_node` installs its own SIGINT and
SIGTERM handlers instead: a signal only sets a stop flag, the spin loop sees it within
`SPIN_PERIOD_S`, and the node is destroyed before the context, so nothing runs on a dead context.
A second signal while shutting down is ignored; a user mistake in the parameters is one line on
stderr and exit code 2.
"""

from __future__ import annotations

import signal
import sys
import threading
from typing import Any, Callable

import rclpy
from rclpy.executors import ExternalShutdownException, MultiThreadedExecutor, SingleThreadedExecutor
from rclpy.signals import SignalHandlerOptions

from ..errors import ConfigError, InputError
from .bag_nodes import use_large_data_transport

#: How often the spin loop looks at the stop flag (seconds): the bound on shutdown latency.
SPIN_PERIOD_S = 0.1

EXIT_USER_ERROR = 2


class StopRequested(Exception):
    """Raised in the main thread by a signal while the node is being built."""


def run_node(factory: Callable[[], Any], args: list[str] | None = None, *, threads: int = 1,
             run: Callable[[Any, threading.Event], None] | None = None,
             done: Callable[[Any], bool] | None = None, finish: Callable[[Any, threading.Event], None] | None = None,
             error_prefix: str = "error", close: Callable[[Any], None] | None = None,
             user_errors: tuple[type[Exception], ...] = (ConfigError, InputError)) -> int:
    """Run one node until SIGINT/SIGTERM (or until it is done); the process exit code.

    Args:
        factory: builds the node (after `rclpy.init`); a ConfigError/InputError refuses the start.
        args: command-line arguments for rclpy (None: sys.argv).
        threads: executor threads (1: a single-threaded executor).
        run: instead of spinning in the main thread, call `run(node, stop)` there while a
            background thread spins; `stop` is set on SIGINT/SIGTERM and `run` must return soon after.
        done: spin until `done(node)` is true (checked every `SPIN_PERIOD_S`), then `finish(node, stop)`
            (which must return soon after `stop` is set).
        close: called before the node is destroyed (e.g. to stop worker processes).
        error_prefix: the start of the one-line error on a refused start.
        user_errors: the exceptions that mean a user mistake (one line, exit 2), not a crash.
    """
    use_large_data_transport()  # images starve small topics otherwise
    rclpy.init(args=args, signal_handler_options=SignalHandlerOptions.NO)
    stop = threading.Event()
    interruptible = threading.Event()  # set while the main thread is not in the spin loop

    def on_signal(signum: int, frame: Any) -> None:
        if stop.is_set():
            return
        stop.set()
        if interruptible.is_set():
            raise StopRequested

    previous = {s: signal.signal(s, on_signal) for s in (signal.SIGINT, signal.SIGTERM)}
    node = executor = spinner = None
    code = 0
    try:
        interruptible.set()  # building can take seconds (a refine worker loading torch): a signal ends it
        node = factory()
        interruptible.clear()
        executor = SingleThreadedExecutor() if threads <= 1 else MultiThreadedExecutor(num_threads=threads)
        executor.add_node(node)
        if run is None:
            while not stop.is_set() and rclpy.ok() and not (done is not None and done(node)):
                executor.spin_once(timeout_sec=SPIN_PERIOD_S)
            if finish is not None and not stop.is_set():
                finish(node, stop)
        else:
            def spin() -> None:
                while not stop.is_set() and rclpy.ok():
                    try:
                        executor.spin_once(timeout_sec=SPIN_PERIOD_S)
                    except ExternalShutdownException:
                        return

            spinner = threading.Thread(target=spin, name="spin", daemon=True)
            spinner.start()
            run(node, stop)  # returns soon after `stop` is set
    except user_errors as err:  # a bad parameter or input refuses the start, in one line
        print(f"{error_prefix}: {err}", file=sys.stderr, flush=True)
        code = EXIT_USER_ERROR
    except (StopRequested, KeyboardInterrupt, ExternalShutdownException):
        pass
    except Exception:
        if not stop.is_set():  # an error of its own, not one of a node being stopped
            raise
    finally:
        interruptible.clear()
        stop.set()
        for s in previous:  # a second Ctrl-C while shutting down must not interrupt the clean-up
            signal.signal(s, signal.SIG_IGN)
        if spinner is not None:
            spinner.join(timeout=2.0)
        if node is not None and close is not None:
            close(node)
        if executor is not None:
            executor.shutdown(timeout_sec=1.0)
        if node is not None:
            node.destroy_node()
        rclpy.try_shutdown()
        for s, handler in previous.items():
            signal.signal(s, handler)
    return code
