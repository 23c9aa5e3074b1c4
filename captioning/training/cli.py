"""``train.py``'s command line, built from the typed settings (:mod:`captioning.training.settings`) and, for the
training options, their one declaration (:mod:`captioning.training.options`): one flag per settings field, its help
and default from the field.
"""
from __future__ import annotations

import argparse
import dataclasses
import sys

from captioning.training.settings import COMMANDS, SECTIONS, OptionError, RunConfig, settle


def flag(name: str) -> str:
    """The command-line spelling of a setting: ``feature_batch_size`` -> ``--feature-batch-size``."""
    for section in SECTIONS:
        for f in dataclasses.fields(section):
            if f.name == name and "flag" in f.metadata:
                return f.metadata["flag"]
    return "--" + name.replace("_", "-")


def spell(template: str) -> str:
    """A core message or help text with its ``{setting}`` names spelled as flags."""
    return OptionError(template).render(flag)


def add_options(p: argparse.ArgumentParser, suppress: bool) -> None:
    """One option per settings field, its help and default from the field."""
    for section in SECTIONS:
        for f in dataclasses.fields(section):
            meta = {k: v for k, v in f.metadata.items() if k != "declared"}
            if "help" not in meta:
                continue
            name, help_text = meta.pop("flag", flag(f.name)), spell(meta.pop("help"))
            default = argparse.SUPPRESS if suppress else f.default
            if f.type in ("bool", bool):
                p.add_argument(name, dest=f.name, action="store_true", default=default, help=help_text)
            else:
                p.add_argument(name, dest=f.name, default=default, help=help_text, **meta)


class Parser(argparse.ArgumentParser):
    """argparse with the project's one-line errors: ``error: ...`` on stderr, exit 2."""

    def error(self, message: str):
        print(f"error: {message} (see: python train.py --help)", file=sys.stderr)
        sys.exit(2)


def build_parser(description: str | None = None) -> Parser:
    """The whole command line: the options, and each command repeating them (so they may follow it)."""
    parser = Parser(description=description, formatter_class=argparse.RawDescriptionHelpFormatter)
    add_options(parser, suppress=False)
    sub = parser.add_subparsers(dest="command")
    for name in COMMANDS:
        add_options(sub.add_parser(name, help=f"run the {name} step"), suppress=True)
    return parser


def parse_args(argv=None, description: str | None = None) -> RunConfig:
    """The command line as a checked RunConfig; the first problem ends the program as one line (exit 2)."""
    args = vars(build_parser(description).parse_args(argv))
    config = RunConfig(args.pop("command") or "all",
                       *(section(**{f.name: args[f.name] for f in dataclasses.fields(section) if f.name in args})
                         for section in SECTIONS))
    problems = settle(config)
    if problems:                                  # the first one, as one line (the others show once it is fixed)
        print(f"error: {problems[0].render(flag)}", file=sys.stderr)
        sys.exit(2)
    return config
