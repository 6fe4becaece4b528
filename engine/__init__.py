"""Training: data pipeline, DeepSpeed, checkpoints, entry points. (Filled in by later issues.)"""
