"""Show the plugin's options in ``fairseq-train --help``.

fairseq parses its command line twice and adds the options of the chosen ``--lr-scheduler`` and
``--optimizer`` only before the second pass, but ``--help`` exits during the first one: no
scheduler's options ever appear in the help. When help is requested for a training command line,
this adds the options of ``knee``, ``one_cycle`` and ``radam`` to the help as argument groups.
Nothing changes for any other command line. Installed as the patch ``cli_help`` of
:mod:`.patches`.
"""

import functools
import sys

from fairseq import options
from fairseq.dataclass.utils import gen_parser_from_dataclass

HELP_FLAGS = ("-h", "--help")


def _add_plugin_groups(parser) -> None:
    from .knee_lr_scheduler import KneeLRScheduleConfig
    from .one_cycle_lr_scheduler import OneCycleLRScheduleConfig
    from .radam import FairseqRAdamConfig

    for title, config in (
        ("--lr-scheduler knee (knee_plugins)", KneeLRScheduleConfig),
        ("--lr-scheduler one_cycle (knee_plugins)", OneCycleLRScheduleConfig),
        ("--optimizer radam (knee_plugins)", FairseqRAdamConfig),
    ):
        gen_parser_from_dataclass(parser.add_argument_group(title), config())


def show_plugin_options_in_help() -> None:
    """Wrap ``fairseq.options.parse_args_and_arch`` (idempotent)."""
    original = options.parse_args_and_arch
    if getattr(original, "__knee_plugins_patch__", None):
        return

    @functools.wraps(original)
    def parse_args_and_arch(parser, input_args=None, *args, **kwargs):
        argv = sys.argv[1:] if input_args is None else input_args
        if "--lr-scheduler" in parser._option_string_actions and any(flag in argv for flag in HELP_FLAGS):
            _add_plugin_groups(parser)
        return original(parser, input_args, *args, **kwargs)

    parse_args_and_arch.__knee_plugins_patch__ = "cli_help"  # type: ignore[attr-defined]
    options.parse_args_and_arch = parse_args_and_arch
