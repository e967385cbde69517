"""lora-syntax command line: ``python extension.py COMMAND ...``.

Each command lives in its own module exposing ``HELP``, ``add_arguments(parser)`` and
``run(args) -> int``; modules are imported only when their command runs, so ``explain``
never pays for torch or gradio start-up.
"""

from __future__ import annotations

import argparse
import importlib
import sys
import warnings
from pathlib import Path

COMMANDS: dict[str, str] = {
    "demo": "lora_syntax.commands.demo",
    "explain": "lora_syntax.commands.explain",
    "inspect": "lora_syntax.commands.inspect",
    "generate": "lora_syntax.commands.generate",
    "ui": "ui.app",
}


def _console_warning(message: Warning | str, category: type[Warning], filename: str, lineno: int,
                     line: str | None = None) -> str:
    """A warning as the commands print theirs ("warning: ..."), without the source file and line of code
    Python shows by default (a duplicate LoRA alias, a library's notice)."""
    return f"warning: {message}\n"


def main(argv: list[str] | None = None) -> int:
    sys.path.insert(0, str(Path(__file__).resolve().parent))
    from lora_syntax.errors import LoraError

    argv = sys.argv[1:] if argv is None else argv
    parser = argparse.ArgumentParser(prog="extension.py", description="Stack LoRAs from prompt tags.")
    commands = parser.add_subparsers(dest="command", metavar="COMMAND", required=True)
    wanted = argv[0] if argv and argv[0] in COMMANDS else None
    for name, module_name in COMMANDS.items():
        if wanted is None or name == wanted:
            module = importlib.import_module(module_name)
            module.add_arguments(commands.add_parser(name, help=module.HELP, description=module.HELP))
        else:
            commands.add_parser(name, help=f"(see `{name} --help`)")
    args = parser.parse_args(argv)
    warnings.formatwarning = _console_warning
    module = importlib.import_module(COMMANDS[args.command])
    try:
        return int(module.run(args) or 0)
    except LoraError as error:
        print(f"error: {error}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print("interrupted", file=sys.stderr)
        return 130


if __name__ == "__main__":
    sys.exit(main())
