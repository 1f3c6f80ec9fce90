"""editflow.inference: the GPU worker (fetch, preprocess, edit, upload, report).

Owns: images and models. Knows nothing of Kubernetes beyond its exit code and
termination message. Heavy imports (torch, diffusers) happen inside the
modules that need them, never at package import.
"""
