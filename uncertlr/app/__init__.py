"""The application layer: the ``uncertlr`` command and the one training pipeline.

* :mod:`uncertlr.app.pipeline` — data → BNN → optimizer/schedule → modulator → fit →
  evaluate → save → report, written once;
* :mod:`uncertlr.app.demo` (``uncertlr demo``) and :mod:`uncertlr.app.train`
  (``uncertlr train``) — configurations of it; the examples are too;
* :mod:`uncertlr.app.cli` — the command line.

Nothing in the library below imports this package; this package (and only it) may import the
reference architectures in ``uncertlr_models``.
"""
