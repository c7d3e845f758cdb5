"""The build side: profile + model -> export -> candidates -> validate -> measure -> choose -> bundle.

Workstation only (torch, onnx, NNCF, the quantizers). Nothing on the device side (``edgevit.runtime``, the
backends' runners) imports from here; ``tests/test_structure.py`` checks it. See docs/architecture.md.
"""
