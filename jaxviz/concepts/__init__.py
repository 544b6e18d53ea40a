"""Concepts: dictionaries over a layer's activations (NMF, semi-NMF, Top-K and BatchTopK sparse
autoencoders), their codes and quality. Pure functions over pytrees, explicit keys, jittable.

``A ≈ Z D``: activations ``A`` (rows x C), codes ``Z`` (rows x K, ``encode``), dictionary ``D``
(K x C, one concept per row, :class:`Dictionary`.components). See docs/concepts.md.
"""

from jaxviz.concepts.dictionary import (METHODS, Dictionary, cd_sweep, code_penalties, decode, encode,
                                        nnls_solve, topk_codes)
from jaxviz.concepts.nmf import (NNDSVDA, FitInfo, NMFReg, SVDStats, dictionary_penalties, fit_nmf,
                                 fit_seminmf, nmf_codes_step, nmf_dictionary_step, nmf_penalty, nmf_stats,
                                 nndsvda_codes, nndsvda_dictionary, nndsvda_norms, residual_sq,
                                 seminmf_codes_init, seminmf_dictionary_step, seminmf_init, svd_stats,
                                 top_singular)
from jaxviz.concepts.quality import (QualityStats, collinearity, match_cosine, quality, quality_from_stats,
                                     quality_stats, stability)
from jaxviz.concepts.sae import (SAEParams, SAEState, batchtopk_codes, fit_sae, sae_dictionary, sae_init,
                                 sae_loss, sae_pre_codes, sae_train_step)
from jaxviz.concepts.job import ConceptsResult, find_concepts  # noqa: E402  (the job builds on the pieces above)
