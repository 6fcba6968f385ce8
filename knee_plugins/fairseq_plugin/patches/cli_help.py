"""Patch ``cli_help``: show the plugin's options in ``fairseq-train --help``.

fairseq parses its command line twice and adds the options of the chosen ``--lr-scheduler`` and
``--optimizer`` only before the second pass, but ``--help`` exits during the first one: no
scheduler's options ever appear in the help. When help is requested for a training command line,
this adds the options of ``knee``, ``one_cycle`` and ``radam`` to the help as argument groups,
read from fairseq's registries. Nothing changes for any other command line.
"""

from __future__ import annotations

import argparse
import functools
import sys

from ._shape import is_patched, mark, parameters, require, unpatched

NAME = "cli_help"
HELP_FLAGS = ("-h", "--help")
PLUGIN_CHOICES = (("--lr-scheduler", "knee"), ("--lr-scheduler", "one_cycle"), ("--optimizer", "radam"))


def _add_plugin_groups(parser) -> None:
    from fairseq.dataclass.utils import gen_parser_from_dataclass
    from fairseq.optim import OPTIMIZER_DATACLASS_REGISTRY
    from fairseq.optim.lr_scheduler import LR_SCHEDULER_DATACLASS_REGISTRY

    registries = {"--lr-scheduler": LR_SCHEDULER_DATACLASS_REGISTRY, "--optimizer": OPTIMIZER_DATACLASS_REGISTRY}
    for option, choice in PLUGIN_CHOICES:
        config = registries[option].get(choice)
        if config is not None:
            gen_parser_from_dataclass(parser.add_argument_group(f"{option} {choice} (knee_plugins)"), config())


def check() -> None:
    from fairseq import options
    from fairseq.dataclass.utils import gen_parser_from_dataclass

    params = parameters(unpatched(options.parse_args_and_arch))
    require(params[:2] == ["parser", "input_args"], f"parse_args_and_arch{tuple(params)}")
    params = parameters(gen_parser_from_dataclass)
    require(params[:2] == ["parser", "dataclass_instance"], f"gen_parser_from_dataclass{tuple(params)}")
    require(
        isinstance(getattr(argparse.ArgumentParser(), "_option_string_actions", None), dict),
        "argparse.ArgumentParser has no _option_string_actions",
    )


def apply() -> None:
    """Wrap ``fairseq.options.parse_args_and_arch`` (idempotent)."""
    from fairseq import options

    original = options.parse_args_and_arch
    if is_patched(original):
        return

    @functools.wraps(original)
    def parse_args_and_arch(parser, input_args=None, *args, **kwargs):
        argv = sys.argv[1:] if input_args is None else input_args
        if "--lr-scheduler" in parser._option_string_actions and any(flag in argv for flag in HELP_FLAGS):
            _add_plugin_groups(parser)
        return original(parser, input_args, *args, **kwargs)

    options.parse_args_and_arch = mark(parse_args_and_arch, NAME)
