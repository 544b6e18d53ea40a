"""Feature visualisation: the names of :mod:`jaxviz.methods.featurevis` under their first address.

The code lives in :mod:`jaxviz.methods.featurevis`, one concept per module (objectives, param,
transforms, recipes, forward, render, quality); ``jaxviz.methods.features.X`` keeps working for every
public name.
"""

from jaxviz.methods.featurevis import *  # noqa: F401,F403
from jaxviz.methods.featurevis import __all__  # noqa: F401
