"""The ``visionzoo`` command.

Each module of this package that defines ``register(subparsers)`` adds subcommands; the
function it registers with ``set_defaults(func=...)`` returns an exit code. Errors a user
can fix (an unknown model, a missing file, a bad value) are printed as one line on stderr
with exit code 2; ``--debug`` shows the traceback instead.
"""

from __future__ import annotations

import argparse
import importlib
import os
import pkgutil
import sys
from collections.abc import Sequence
from pathlib import Path
from typing import NoReturn

from ..base import count  # (re-exported: the commands' plural helper, shared with the library)

__all__ = [
    "CLIError", "build_parser", "check_device", "check_img_size", "check_output_dir", "check_picture_output", "command", "count", "main",
    "no_model_matches", "writable",
]


class CLIError(Exception):
    """A problem with the user's input, reported as one line."""


def no_model_matches(pattern: str | None, where: str = "") -> CLIError:
    """The refusal of a wildcard pattern that matches no registered name (``list``, ``info``,
    ``flops --table``, ``bench``): an error, as an unknown name is, not an empty listing."""
    return CLIError(f"no model matches {pattern or '*'!r}{where} (visionzoo list shows the names)")


def check_img_size(img_size: int | None) -> None:
    """Refuse an ``--img-size`` below 1, naming the option (the library's message names its
    argument, ``img_size``)."""
    if img_size is not None and img_size < 1:
        raise CLIError(f"--img-size must be positive, got {img_size}")


def check_device(device: str | None) -> str | None:
    """``--device`` as given (None: the command's default) when this machine has it: ``cpu``,
    ``cuda`` or ``cuda:N``; a :class:`CLIError` otherwise."""
    if device is None or device == "cpu":
        return device
    import re

    import torch

    cuda = re.fullmatch(r"cuda(?::(\d+))?", device)
    if not cuda:
        raise CLIError(f"--device must be cpu, cuda or cuda:N, got {device!r}")
    if not torch.cuda.is_available():
        raise CLIError(f"--device {device}: no CUDA device is available")
    if cuda.group(1) is not None and int(cuda.group(1)) >= torch.cuda.device_count():
        raise CLIError(f"--device {device}: this machine has {torch.cuda.device_count()} CUDA device(s)")
    return device


def check_output_folder(path: str | os.PathLike[str], flag: str = "--output") -> None:
    """Refuse an output path whose folder cannot hold it: one above it is a file (the wording
    of ``visionzoo export``), or its folder does not exist."""
    p = Path(path)
    above = next((q for q in p.parents if q.exists()), None)
    if above is not None and not above.is_dir():
        raise CLIError(f"{flag} {p}: {above} is a file, not a folder")
    if not p.parent.is_dir():
        raise CLIError(f"{flag} {p}: the folder {p.parent} does not exist")


def check_output_dir(path: str | os.PathLike[str], flag: str = "--output-dir") -> Path:
    """A folder to write files into, refused before any work is done where it cannot be: a
    file, a path under a file or in a folder that does not exist, not writable. It is not
    made here (the caller makes it once it has something to write)."""
    p = Path(path)
    if p.exists() and not p.is_dir():
        raise CLIError(f"{flag} {p} is a file, not a folder")
    check_output_folder(p, flag)
    _refuse_unwritable(p, flag)
    return p


def writable(path: str | os.PathLike[str]) -> bool:
    """Whether a file can be written at ``path``: the file's own permission where it exists,
    else its folder's (a read-only file system included)."""
    p = Path(path)
    return os.access(p if p.exists() else p.parent, os.W_OK)


def _refuse_unwritable(p: Path, flag: str) -> None:
    """A :class:`CLIError` where nothing can be written at ``p`` (:func:`writable`), naming the path that refuses."""
    if not writable(p):
        raise CLIError(f"{flag} {p}: {p if p.exists() else p.parent} is not writable")


def check_picture_output(path: str | os.PathLike[str] | None, flag: str = "--output") -> None:
    """Refuse a picture path that cannot be written before any work is done: a folder, a path
    under a file or in a folder that does not exist, or a file type matplotlib does not write
    (a name without an extension included: matplotlib would add ``.png`` to it)."""
    if path is None:
        return
    p = Path(path)
    if p.is_dir():
        raise CLIError(f"{flag} {p} is a folder; give the picture's file name (e.g. {p / 'out.png'})")
    check_output_folder(p, flag)
    _refuse_unwritable(p, flag)
    try:
        from matplotlib.figure import Figure
    except ImportError:
        return  # the command says what to install
    kinds = Figure().canvas.get_supported_filetypes()
    if p.suffix.lower().lstrip(".") not in kinds:
        raise CLIError(f"{flag} {p}: pictures are written as {', '.join('.' + k for k in sorted(kinds))}")


class _Parser(argparse.ArgumentParser):
    """argparse's parser, its refusals (an unknown option, a value of the wrong type or not among
    the choices) one line like the commands' own, which point to ``--help`` for the usage
    argparse prints in full above them (25 lines for ``train``)."""

    def error(self, message: str) -> NoReturn:
        self.exit(2, f"{self.prog}: error: {message} (see {self.prog} --help)\n")


def build_parser() -> argparse.ArgumentParser:
    parser = _Parser(
        prog="visionzoo", description="Vision architectures: list, inspect, train, evaluate, analyse."
    )
    parser.add_argument("--debug", action="store_true", help="show full tracebacks on errors")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND")
    for mod in sorted(pkgutil.iter_modules(__path__), key=lambda m: m.name):
        if mod.name.startswith("_"):
            continue
        module = importlib.import_module(f"{__name__}.{mod.name}")
        register = getattr(module, "register", None)
        if register is not None:
            register(sub)
    return parser


def _user_errors() -> tuple[type[BaseException], ...]:
    from ..base import InputError
    from ..checkpoints import CheckpointError
    from ..registry import UnknownModelError

    # OSError: a missing file, a path under a file, no permission, a full disk
    return (CLIError, UnknownModelError, CheckpointError, InputError, OSError, ValueError, TypeError)


def main(argv: Sequence[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    if not getattr(args, "func", None):
        parser.print_help()
        return 0 if args.command is None else 2
    try:
        return int(args.func(args) or 0)
    except KeyboardInterrupt:
        print("visionzoo: interrupted", file=sys.stderr)
        return 130
    except BrokenPipeError:  # output piped into `head` and the like
        sys.stderr.close()
        return 0
    except _user_errors() as e:
        if args.debug:
            raise
        print(f"visionzoo {args.command}: error: {_message(e)}", file=sys.stderr)
        return 2
    except (MemoryError, RuntimeError) as e:  # RuntimeError: torch's CPU allocator ("can't allocate memory"), CUDA's OOM
        if not args.debug and _peer_stopped(e):
            print(f"visionzoo {args.command}: error: another process of this torchrun run stopped (its own message says why); "
                  "this one stops too", file=sys.stderr)
            return 1
        if args.debug or not (isinstance(e, MemoryError) or _out_of_memory(e)):
            raise
        print(f"visionzoo {args.command}: error: out of memory ({type(e).__name__}: {str(e).splitlines()[0] if str(e) else 'no details'}): "
              "ask for less (a smaller size, batch or picture)", file=sys.stderr)
        return 2


def _message(e: BaseException) -> str:
    """The error's message; an unknown model name's pointing to ``visionzoo list`` (the library's
    points to ``visionzoo.list_models()``); for one raised in a DataLoader worker process
    (``--workers N``), which torch raises again here with the worker's whole traceback as its
    message (and which a command may have passed on as a :class:`CLIError`), the worker's own
    message: the traceback's last line, less the error's name."""
    import re

    from ..registry import UnknownModelError

    if isinstance(e, UnknownModelError):
        return e.message("visionzoo list")
    text = str(e)
    caught = re.match(r"Caught (\w+) in DataLoader worker process \d+\.\nOriginal Traceback", text)
    if caught is None:
        return text
    return re.sub(rf"^(?:[\w.]+\.)?{caught.group(1)}: ", "", text.rstrip().splitlines()[-1])


def _peer_stopped(e: BaseException) -> bool:
    """Whether ``e`` is a collective of a torchrun process failing because another process of the
    run has gone (one that met unreadable data, say, and printed why): Gloo's "Connection closed
    by peer", or torch.distributed's own errors. Its traceback would bury that message."""
    import torch.distributed as dist

    if int(os.environ.get("WORLD_SIZE", "1")) <= 1:
        return False
    return isinstance(e, dist.DistError) or any(w in str(e) for w in ("Connection closed by peer", "Connection reset by peer"))


def _out_of_memory(e: RuntimeError) -> bool:
    """Whether ``e`` is an allocation failure (torch's CPU allocator's or CUDA's), not another error."""
    import torch

    return isinstance(e, torch.OutOfMemoryError) or "can't allocate memory" in str(e)


def command() -> int:
    """The ``visionzoo`` program (its console script and ``python -m visionzoo``): :func:`main`
    in a process set up for throughput, where freed memory stays in the heap for the next
    batch (:mod:`visionzoo.runtime`; ``VISIONZOO_MALLOC=default`` leaves malloc alone). A
    program calling :func:`main` keeps its own settings."""
    from ..runtime import malloc_from_env

    try:
        malloc_from_env()
    except ValueError as e:
        print(f"visionzoo: error: {e}", file=sys.stderr)
        return 2
    return main()


if __name__ == "__main__":  # pragma: no cover
    sys.exit(command())
