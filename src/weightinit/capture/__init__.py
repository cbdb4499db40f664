"""Deferred construction: build a model on ``meta`` tensors, recording its constructor inits."""
