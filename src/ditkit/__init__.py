"""ditkit: a multifunctional generative-transformer (DiT) toolkit.

    import ditkit
    pipe = ditkit.load("shapes-64")
    pipe.generate("a red circle to the left of a blue square", seed=0)[0].save("out.png")

Heavy modules load lazily so `import ditkit` stays fast.
"""

__version__ = "0.1.0"


def load(name_or_path="shapes-64", device="cpu"):
    from ditkit.api import load as _load

    return _load(name_or_path, device)


def __getattr__(name):
    if name in ("Pipeline", "embedded_models"):
        from ditkit import api as pipeline

        return getattr(pipeline, name)
    raise AttributeError(f"module 'ditkit' has no attribute {name!r}")
