"""ditkit: a multifunctional generative-transformer (DiT) toolkit.

    import ditkit
    pipe = ditkit.load("shapes-64")
    pipe.generate("a red circle to the left of a blue square", seed=0)[0].save("out.png")

`load`, `Pipeline` and `embedded_models` are re-exported lazily (the imports sit inside the
functions on purpose) so `import ditkit` stays fast and loads no torch.
"""

__version__ = "0.1.0"


def load(name_or_path="shapes-64", device="cpu", engine=None):
    """Load an embedded model by name, a model folder or an exported folder; engine: torch,
    onnxruntime or openvino (ditkit.api.load)."""
    from ditkit.api import load as _load  # why here: keeps `import ditkit` light

    return _load(name_or_path, device, engine)


def __getattr__(name):
    if name == "Pipeline":
        from ditkit.api import Pipeline  # why here: keeps `import ditkit` light

        return Pipeline
    if name == "embedded_models":
        from ditkit.core.checkpoint import embedded_models  # why here: keeps `import ditkit` light

        return embedded_models
    raise AttributeError(f"module 'ditkit' has no attribute {name!r}")
