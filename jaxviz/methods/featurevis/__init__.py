"""Feature visualisation by gradient ascent in input space: many units of a layer in one compiled call.

One concept per module; the pieces compose as pure functions (as optax transforms do; the objectives
as lucid's and lucent's do):

* :mod:`.objectives` — :class:`Objective` (``objective(taps, index) -> one value per image``), built by
  :func:`channel`, :func:`channel_interior`, :func:`neuron`, :func:`class_logit`, :func:`class_logprob`,
  :func:`direction`, combined with ``+ - * /`` and numbers; the diversity term :func:`gram_similarity`;
  penalties ``image -> scalar`` :func:`total_variation`, :func:`l2`;
* :mod:`.param` — parameterisations :class:`Param` ``(init, to_image, resize)``: :func:`pixels`,
  :func:`fft_decorrelated`;
* :mod:`.transforms` — ``(key, image) -> image``: :func:`pad`, :func:`jitter`, :func:`random_crop`,
  :func:`random_scale`, :func:`random_rotate`, :func:`compose`, :func:`lucid_transforms`;
* :mod:`.recipes` — :class:`Recipe` bundles them with an optax optimiser (the seeds' normalisations
  :func:`normalize_rms`, :func:`normalize_l2`) and a deprocessing; :data:`PRESETS` / :data:`RECIPES`
  and :func:`get_recipe`;
* :mod:`.forward` — the one forward pass the ascent and the measures share (:func:`model_input`);
* :mod:`.render` — the ascent, :func:`filter_patterns`;
* :mod:`.quality` — its result :class:`Patterns` and :func:`measure`: against :data:`PHOTOS`, robustness, :func:`hf_energy`,
  :func:`selectivity`.
"""

from jaxviz.methods.featurevis.forward import model_input
from jaxviz.methods.featurevis.objectives import (DIVERSITY, LOGITS, Objective, Taps, as_objective, channel,
                                                  channel_interior, class_logit, class_logprob, direction,
                                                  gram_similarity, l2, logit, neuron, total_variation)
from jaxviz.methods.featurevis.param import Param, Spectrum, fft_decorrelated, pixels, uniform_start
from jaxviz.methods.featurevis.quality import (PHOTOS, RESPONSES_CHUNK, ROBUSTNESS_DRAWS, Patterns, hf_energy, measure,
                                               photo_crops, selectivity)
from jaxviz.methods.featurevis.recipes import (PRESETS, RECIPES, Preset, Recipe, deprocess_dlwp1, deprocess_dlwp2,
                                               deprocess_unit, get_recipe, normalize_l2, normalize_rms)
from jaxviz.methods.featurevis.render import filter_patterns
from jaxviz.methods.featurevis.transforms import (CLASS_ZOOM, LUCID_ZOOM, Transform, compose, jitter, jitter_scale,
                                                  lucid_transforms, pad, random_crop, random_rotate, random_scale)

__all__ = [
    "CLASS_ZOOM", "DIVERSITY", "LOGITS", "LUCID_ZOOM", "Objective", "PHOTOS", "PRESETS", "Param", "Patterns", "Preset",
    "RECIPES", "RESPONSES_CHUNK", "ROBUSTNESS_DRAWS", "Recipe", "Spectrum", "Taps", "Transform", "as_objective",
    "channel", "channel_interior", "class_logit", "class_logprob", "compose", "deprocess_dlwp1", "deprocess_dlwp2",
    "deprocess_unit", "direction", "fft_decorrelated", "filter_patterns", "get_recipe", "gram_similarity", "hf_energy",
    "jitter", "jitter_scale", "l2", "logit", "lucid_transforms", "measure", "model_input", "neuron", "normalize_l2",
    "normalize_rms", "pad", "photo_crops", "pixels", "random_crop", "random_rotate", "random_scale", "selectivity",
    "total_variation", "uniform_start",
]
