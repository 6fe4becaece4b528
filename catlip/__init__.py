"""CatLIP: image-text pre-training as multi-label classification over WordNet synsets.

arXiv 2404.15653. This package holds the method: caption-to-synset labels and the vocabulary
(:mod:`catlip.labels`, :mod:`catlip.vocab`), NLTK data without a hub (:mod:`catlip.nltk_setup`),
and, in later modules, the models and losses.
"""

__version__ = "0.1.0"
