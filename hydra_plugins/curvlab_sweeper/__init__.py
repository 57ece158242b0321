"""curvlab's Hydra sweeper plugin: ``hydra/sweeper=list`` (see :mod:`.list_sweeper`)."""
