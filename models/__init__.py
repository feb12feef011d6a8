"""Reference architectures (installed as ``uncertlr_models``)."""
