"""milter-manager-convert-config: a milter manager 2.x configuration as milterman TOML (manual:
doc/milter-manager-convert-config.1.md)."""

from __future__ import annotations

import os
import sys

from .. import __version__
from .common import fail, parse_arguments

USAGE = """milter-manager-convert-config: convert a milter manager 2.x configuration (Ruby) to milterman's TOML.

Usage:
  milter-manager-convert-config [options] CONFIG_DIR_OR_FILE
  milter-manager-convert-config (-h | --help)
  milter-manager-convert-config --version

Arguments:
  CONFIG_DIR_OR_FILE           The directory of milter-manager.conf (e.g. /etc/milter-manager), or one file.

Options:
  -o FILE, --output=FILE       Write the TOML to FILE instead of standard output.
  --strict                     Exit with status 1 when anything could not be converted.
  --python-skeleton=DIR        Write DIR/milter_manager_conditions.py (unless it exists), a Python module
                               with one class per Ruby applicable condition that could not be converted,
                               and point the [[condition]] tables at it.
  -h, --help                   Show this help.
  --version                    Print the version.

The files are read, never run: load and load_if_exist are followed to the files they name,
relative to the configuration directory, and nothing else is opened (load_default becomes
[package] platform = "debian"; the package's defaults files are not read).
What cannot be converted is reported on standard error as
  FILE:LINE: cannot convert: WHAT; WHAT TO DO INSTEAD
and written as a comment in the TOML where it would have gone.

Exit status: 0 (also when something was not converted, unless --strict); 1 with --strict when
something was not converted, or when the input cannot be read.
"""


def main(argv: list[str] | None = None) -> int:
    """Entry point of milter-manager-convert-config."""
    arguments = parse_arguments(USAGE, argv, f"milter-manager-convert-config {__version__}")
    from ..tools.convert_config import SKELETON_MODULE, convert

    source = arguments["CONFIG_DIR_OR_FILE"]
    if os.path.isdir(source) and not os.path.isfile(os.path.join(source, "milter-manager.conf")):
        fail(f"milter-manager-convert-config: {source}: no milter-manager.conf in this directory")
    if not os.path.exists(source):
        fail(f"milter-manager-convert-config: {source}: no such file or directory")
    skeleton_dir = arguments["--python-skeleton"]
    try:
        result = convert(source, skeleton_wanted=skeleton_dir is not None)
    except OSError as error:
        fail(f"milter-manager-convert-config: {error.filename or source}: {error.strerror}")
    for problem in result.problems:
        sys.stderr.write(f"{problem}\n")
    try:
        if skeleton_dir is not None and result.skeleton is not None:
            os.makedirs(skeleton_dir, exist_ok=True)
            module = os.path.join(skeleton_dir, f"{SKELETON_MODULE}.py")
            if os.path.exists(module):  # the site may have filled it in since the last run
                sys.stderr.write(f"{module}: exists, not overwritten\n")
            else:
                with open(module, "w", encoding="utf-8") as stream:
                    stream.write(result.skeleton)
        if arguments["--output"]:
            with open(arguments["--output"], "w", encoding="utf-8") as stream:
                stream.write(result.toml)
        else:
            sys.stdout.write(result.toml)
    except OSError as error:
        fail(f"milter-manager-convert-config: {error.filename}: {error.strerror}")
    output = arguments["--output"]
    if skeleton_dir is not None and result.skeleton is not None and output is not None and \
            os.path.realpath(os.path.dirname(os.path.abspath(output))) != os.path.realpath(skeleton_dir):
        sys.stderr.write(f"note: {SKELETON_MODULE}.py is not beside {output}: copy it there, or put "
                         f"{skeleton_dir} on PYTHONPATH, so milter-manager finds it\n")
    if result.problems and arguments["--strict"]:
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
