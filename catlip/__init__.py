"""CatLIP: image-text pre-training as multi-label classification over WordNet synsets.

arXiv 2404.15653. This package is the method, pure PyTorch; it may use kernels/, never engine/.
  labels           caption -> noun synsets -> label ids: the labelers (catlip-1, corenet) and the
                   vocabulary; senses.py is the catlip-2 labeler, wordnet_nouns.py its WordNet view
  vocab            build the synset vocabulary from captions (``catlip vocab``)
  classes          class sets to synsets, and synsets to rows of the head (``catlip classes``)
  captions         read captions from COCO JSON, TSV and WebDataset tars
  text             caption cleaning, sentence splitting, tokenisation and POS tagging
  nltk_resources   the NLTK data read at run time: WordNet's reader, the search path, the check
  models           the ViT, the CatLIP model (tower + linear head over the vocabulary), the
                   classifier for transfer; param_groups.py their optimizer groups
  clip, contrastive, tokenizer   the CLIP / SigLIP baseline: text tower, losses, BPE tokenizer
  convert/         weights across libraries, one converter per source (timm, open_clip, corenet)
  readers          JSON and YAML as the engine reads users' files
  api              the Python front door, exported here (imported on first use):
                   create_model_and_transforms, zero_shot_classifier, tag (docs/transfer.md)
Getting NLTK's data onto a machine is provisioning: provision/ at the repository root.
"""

from typing import Any

__version__ = "0.1.0"

_API = ("create_model_and_transforms", "zero_shot_classifier", "tag", "EvalTransform", "ApiError")
__all__ = [*_API, "__version__"]


def __getattr__(name: str) -> Any:
    """``catlip.create_model_and_transforms`` etc.: catlip.api, imported when first asked for, so
    that ``import catlip`` stays light (no torch until then)."""
    if name in _API:
        from catlip import api

        return getattr(api, name)
    raise AttributeError(f"module 'catlip' has no attribute {name!r}")
