"""Training: runs the method (catlip/) with the kernels (kernels/) on data, on one or many ranks.

  train          the loop and ``python -m engine.train``; objectives.py the tasks it trains (CatLIP,
                 CLIP / SigLIP, fine-tune, probe), each plugged into the loop
  config         the typed run configuration (YAML + ``--set``)
  parallel       the "parallelize" step: DeepSpeed ZeRO, activation checkpointing, compile
  distributed    process groups (nccl, gloo); launch.py ``python -m engine.launch``
  data           the DALI loader over packed shards; multiscale.py variable-resolution batches;
                 prefetch.py the host-side prefetch thread
  packing/       ``catlip pack``: captions or class-labelled images into WebDataset shards
  executor       where data preparation runs: this process, worker processes or Ray
  checkpoint     save, resume, prune, ``latest``, the fp32 export
  metrics        held-out mAP and top-k; logs.py what a run reports
  pretrained     ``model.init_from`` and the synset classifier initialisation (transfer)
  zeroshot       ``catlip predict`` / ``catlip evaluate``
  cli            ``catlip`` (``python -m engine``); cli_common.py what its commands share
DeepSpeed, DALI and compile wrapping live here, never in a model file (catlip/ stays pure).
"""
