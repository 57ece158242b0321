"""curvlab's Hydra configs, shipped inside the package (Hydra reads them as ``pkg://curvlab.configs``).

The checkout's top-level ``configs/`` is a symbolic link to this folder. Groups mirror the
package: ``dataset/``, ``net/``, ``loss/``, ``curvature/``, ``solver/``, ``experiment/``,
``hydra/{launcher,help}/``.
"""
