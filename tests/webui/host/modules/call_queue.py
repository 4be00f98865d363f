"""Stand-in for modules.call_queue: what the UI does with an exception from Generate (v1.10.1's
wrap_gradio_call_no_job): the traceback to the console, "<div class='error'>Type: message</div>" to the page."""

import html
from functools import wraps

from modules import errors


def wrap_gradio_call_no_job(func, extra_outputs=None):
    @wraps(func)
    def f(*args, **kwargs):
        try:
            res = list(func(*args, **kwargs))
        except Exception as e:  # noqa: BLE001 - as the host does
            errors.report(f"Error completing request\nArguments: {args} {kwargs}", exc_info=True)
            error_message = f'{type(e).__name__}: {e}'
            res = (extra_outputs or [None, '']) + [f"<div class='error'>{html.escape(error_message)}</div>"]
        return tuple(res)
    return f
