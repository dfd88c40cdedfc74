"""The body of every forked child.

Runs in: stage-1, init.

No exception may unwind past a fork (mkosi's uncaught_exception_handler(fork=True), crun's
send_error_to_sync_socket_and_die): a child turns any failure into one ERROR message for
the parent, which prints it, and always leaves through os._exit().
"""

from __future__ import annotations

import os

from rootless import log
from rootless.errors import EXIT_SETUP, RboxError, resource_error

TYPE_CHECKING = False  # not `from typing import ...`: typing costs 9 ms at start-up
if TYPE_CHECKING:
    from collections.abc import Callable

    from rootless.sync import Channel


def run_child(chan: Channel, role: str, body: Callable[[], int]) -> None:
    """Run `body` in a forked child and _exit with its result; never returns."""
    code = EXIT_SETUP
    try:
        log.set_role(role)
        code = body()
    except RboxError as e:
        code = e.exit_code
        _report(chan, e)
    except OSError as e:
        # A resource ran out here (fork, a descriptor, space): rbox's failure, in words.
        error = resource_error(e, f"in {role}")
        _report(chan, error or _internal(role, e))
    except BaseException as e:  # noqa: BLE001 - nothing may escape a forked child
        _report(chan, _internal(role, e))
    finally:
        os._exit(code)


def _internal(role: str, e: BaseException) -> RboxError:
    if log.debugging():
        import traceback  # only on this path: it costs 5 ms at start-up

        log.write_raw(traceback.format_exc())   # the error itself stays one line
    return RboxError(f"internal error in {role}: {type(e).__name__}: {e}",
                     hint="run again with --debug and report this as a bug")


def _report(chan: Channel, err: RboxError) -> None:
    try:
        chan.send_error(err)
    except OSError:
        pass  # the parent is gone; nobody is left to tell
