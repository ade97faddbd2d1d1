"""How the commands report a mistake: one paragraph on stderr, no traceback, an exit code."""

from __future__ import annotations

import os

from rich.console import Console

err_console = Console(stderr=True, highlight=False, soft_wrap=True)


def fail(message: str, code: int = 2) -> None:
    """Print a user-facing error and exit; no traceback. Of the processes of a distributed run,
    which all meet the same error, only the first prints it."""
    if os.environ.get("RANK", "0") == "0":
        from rich.markup import escape  # the message is text: "[slurm]" or "[abc]" must show as written

        err_console.print(f"[bold red]error:[/bold red] {escape(message)}", markup=True)
    raise SystemExit(code)
