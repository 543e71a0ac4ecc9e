"""The engine (layer 3): GenerationRequest -> guided velocity -> sampler -> images.

    from ditkit.engine import Engine, GenerationRequest
    engine = Engine(model, encoder, defaults=sample_config, source=model_folder)
    x = engine.generate(GenerationRequest.from_sample(["a red circle"], engine.defaults, seed=0))
"""

from ditkit.engine.generate import Engine, ProgressCallback, generate_tensor, initial_noise, load_prior
from ditkit.engine.request import GenerationRequest, sample_settings
from ditkit.engine.velocity import prompt_velocity

__all__ = ["Engine", "GenerationRequest", "ProgressCallback", "generate_tensor", "initial_noise", "load_prior",
           "prompt_velocity", "sample_settings"]
