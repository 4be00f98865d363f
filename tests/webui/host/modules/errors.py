"""Stand-in for modules.errors: report() as v1.10.1 prints it (every line with '***', then the traceback)."""

import sys
import textwrap
import traceback


def report(message, *, exc_info=False):
    for line in message.splitlines():
        print("***", line, file=sys.stderr)
    if exc_info:
        print(textwrap.indent(traceback.format_exc(), "    "), file=sys.stderr)
        print("---", file=sys.stderr)
