"""The ways in: one module per ``mgd-lightning`` subcommand.

* :mod:`~mgd_lightning.commands.main`: the ``mgd-lightning`` console entry point, which dispatches the subcommands;
* :mod:`~mgd_lightning.commands.cli`: the LightningCLI (``fit`` / ``validate`` / ``test`` / ``predict``);
* :mod:`~mgd_lightning.commands.demo` (``demo [--task detection]``), :mod:`~mgd_lightning.commands.study`
  (``study``), :mod:`~mgd_lightning.commands.taps` (``taps``), :mod:`~mgd_lightning.commands.export` (``export``);
* :mod:`~mgd_lightning.commands.compare`: configs over seeds (``mgd-lightning compare``).

Nothing in the package imports this layer; it imports every other one.
"""
