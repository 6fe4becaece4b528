"""Weights across libraries: our ViT to timm and back, open_clip and corenet towers, corenet's vocabulary.

One converter per source, each in its own file; every public name is importable from here:
  timm.py           export_timm, to_timm_state, timm_model_args (our ViT -> timm); export_timm_folder,
                    timm_hf_config (a hub-style folder: config.json + model.safetensors); from_timm
  open_clip.py      from_open_clip: open_clip's visual tower
  corenet.py        from_corenet, corenet_pos_embed: corenet's ViT and its position table
  corenet_vocab.py  read_corenet_vocab, write_corenet_vocab: corenet's vocabulary pickle, data only
  load.py           load_encoder_state, detect_source: any of these towers, told by its key names
  state.py          InteropError, check_vit_state, reading files: what the converters share

``export_timm(state, meta, out)`` writes a CatLIP state dict (``encoder.*``, ``head.*``) under timm's
``VisionTransformer`` names, with ``timm_model`` and ``timm_kwargs`` (JSON) in the safetensors
metadata beside :func:`engine.checkpoint.consolidate`'s entries, so that::

    m = timm.create_model(meta["timm_model"], pretrained=False, num_classes=V, **json.loads(meta["timm_kwargs"]))
    m.load_state_dict(safetensors.torch.load_file(F), strict=True)

computes our logits (``timm_num_classes`` holds V). Our ViT is timm's with ``class_token=True``,
``global_pool="token"``, no fc-norm, a pre-norm only where ``ViTConfig.pre_norm``, qkv bias, exact GELU and LayerNorm eps 1e-6; the
key names differ only in ``patch_embed.proj`` and ``mlp.fc1``/``mlp.fc2``.

``load_encoder_state(path_or_state)`` reads, into our names (``encoder.*``, and ``head.*`` where the
source has a classifier), the image tower of
  * this engine: a catlip export or checkpoint state (``encoder.*``), a CLIP run's ``visual.*``;
  * timm's ``VisionTransformer`` (``patch_embed.proj``, ``blocks.N.mlp.fc1``, ``head``; also a
    ``catlip export --format timm`` file);
  * open_clip's visual tower (``conv1``, ``class_embedding``, ``positional_embedding``,
    ``transformer.resblocks.N.{ln_1, attn.in_proj_*, attn.out_proj, ln_2, mlp.c_fc, mlp.c_proj}``,
    ``ln_post``, ``proj``; a whole CLIP state's ``visual.*``);
  * corenet's ``VisionTransformer`` (``corenet/modeling/models/classification/vit.py``:
    ``patch_emb``, ``cls_token``, ``pos_embed.pos_embed.pos_embed``, ``transformer.N.pre_norm_mha``
    / ``pre_norm_ffn`` of ``TransformerEncoder`` or ``FlashTransformerEncoder``,
    ``post_transformer_norm``, ``classifier``), as its checkpoints hold it (``model_state_dict``;
    a training ``checkpoint.pt`` that also holds ``ema_state_dict`` gives the EMA weights, saying
    so), into the ``corenet_vit_*`` presets: its convolutional stem (``patch_emb.{0,1,2}.block``: conv
    k4 s4 + batch norm + GELU, conv k2 s2 + batch norm + GELU, conv k2 s2) is our ``ConvStem``
    (``ViTConfig(stem="conv")``), running statistics included.
The source is told by its key names. What maps exactly:
  * a norm before the blocks (open_clip ``ln_pre``, timm ``norm_pre``) is our ``norm_pre``
    (``ViTConfig.pre_norm``; the ``openclip_vit_*`` presets, eps 1e-5, export to timm's
    ``vit_*_clip_224``);
  * a layer scale (timm ``ls1.gamma``, open_clip ``ls_1.gamma``) is folded into the projection before
    it; a missing qkv or patch-embedding bias (open_clip's ``conv1`` has none) becomes zeros;
  * a position embedding without a class-token row (timm ``no_embed_class``, corenet: its class
    token gets none, as in DeiT III) gets a zero row, which is the same computation;
  * corenet keeps 196 positions and interpolates them linearly over the flattened sequence for
    other resolutions: the ``corenet_vit_*`` presets keep that table and do the same at every
    forward (``ViTConfig.pos_interp``); with ``image_size`` the interpolation is done here once,
    as corenet does it, for a model that holds a table per resolution.
What does not, and is refused with the reason (``partial=True`` leaves those tensors out, with a
warning, for an initialisation that will be trained further):
  * (to timm) the conv stem: timm's patch embedding is one convolution;
  * attention pooling, register tokens, an fc-norm (average pooling), q/k norms, other MLPs.
Dropped on purpose: open_clip's ``proj`` (the map into the joint image-text space; our encoder's
output is the ``ln_post``'d class token before it, the features a new classifier reads), corenet's
``neural_augmentor`` (a training-time augmentation) and ``simple_fpn`` (detection). Not visible in
a state dict, so not checked: the activation (OpenAI CLIP towers use QuickGELU, ours exact GELU)
and LayerNorm eps (open_clip's is 1e-5, ours 1e-6 unless ``ViTConfig.norm_eps`` says otherwise).

``read_corenet_vocab(pkl)`` reads corenet's released vocabulary, a pickled ``{"n5928118": count}``
(part of speech + unpadded WordNet 3.0 offset, most frequent first; the order is the head's row
order), with an unpickler that resolves no global at all, so a pickle that names a function (the
way pickles run code) is refused before anything runs; ``write_corenet_vocab`` writes it as our
vocabulary TSV (catlip/labels.py's ``Vocabulary``: wnid, synset name and lemma from WordNet).
"""

from catlip.convert.corenet import corenet_pos_embed
from catlip.convert.corenet_vocab import (
    RefusedPickle,
    read_corenet_pickle,
    read_corenet_vocab,
    write_corenet_vocab,
)
from catlip.convert.load import detect_source, load_encoder_state
from catlip.convert.state import InteropError, check_vit_state
from catlip.convert.timm import (
    HF_CONFIG,
    HF_WEIGHTS,
    PRESET_TO_TIMM,
    TIMM_ARCHS,
    config_from_meta,
    export_timm,
    export_timm_folder,
    timm_hf_config,
    timm_model_args,
    to_timm_state,
)

__all__ = [
    "HF_CONFIG",
    "HF_WEIGHTS",
    "PRESET_TO_TIMM",
    "TIMM_ARCHS",
    "InteropError",
    "RefusedPickle",
    "check_vit_state",
    "config_from_meta",
    "corenet_pos_embed",
    "detect_source",
    "export_timm",
    "export_timm_folder",
    "load_encoder_state",
    "read_corenet_pickle",
    "read_corenet_vocab",
    "timm_hf_config",
    "timm_model_args",
    "to_timm_state",
    "write_corenet_vocab",
]
