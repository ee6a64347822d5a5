"""The command modules of ``unitune``: each exposes ``add_arguments(parser)`` and
``run(args) -> int`` and is registered with one entry in ``unitune.cli.COMMANDS``.

A command module imports torch, Ray and MLflow only inside ``run``, so building the
parser (``unitune --help``) stays fast. Command modules never import ``unitune.cli``;
the helpers every job command shares are in :mod:`unitune.commands.jobargs`. The
commands whose work lives next to them keep their module there (``unitune.search.command``,
``unitune.study.command``, ``unitune.evaluate``, ``unitune.export``, ``unitune.ui``).
"""
