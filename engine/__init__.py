"""Training: the data pipeline, DeepSpeed, checkpoints and the entry points (uses ``catlip/`` and ``kernels/``).

train.py        the trainer: wires the parts below into one run, and ``python -m engine.train``
config.py       the typed run config (sections model, objective, data, optim, parallel,
                checkpoint, run) and the keys that moved (read for one release); errors.py: ConfigError
objectives.py   the tasks plugged into the loop (catlip, clip, siglip, finetune, probe): the registry
pretrained.py   transfer's pre-trained side: objective.init_from, the synset classifier
parallel.py     the parallelize step: activation checkpointing, compile, DeepSpeed ZeRO 0-3
checkpoint.py   save, resume, prune, the fp32 export; resume.py: what a resumed run may change;
                reshard.py: resume on another number of ranks
data/           packed shards -> DALI -> batches (pipeline, loader, dataset checks, sources)
multiscale.py   variable-resolution batches: the per-step draws and the loader's chunk plan
prefetch.py     host-side batch work (tokenising) one batch ahead of the step
metrics.py      held-out mAP and top-k over ranks; logs.py: console, log.jsonl, TensorBoard
distributed.py  process groups (nccl, gloo); launch.py: ``python -m engine.launch`` (torchrun, loopback)
zeroshot.py     ``catlip predict`` and ``catlip evaluate`` with the synset head
packing/        ``catlip pack``: captions or class-labelled images -> WebDataset shards
executor.py     where data preparation runs: this process, worker processes, or Ray
cli.py          ``catlip`` (cli_common.py: what several commands share)
"""
