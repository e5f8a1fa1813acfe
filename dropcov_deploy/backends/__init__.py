"""Backends: a loader and a runner each (torch, onnxruntime, tensorrt), one runner interface.

A runner takes a dict of named numpy arrays and returns a dict of named numpy arrays,
like Polygraphy's runners. Each backend module imports its library lazily.
"""
