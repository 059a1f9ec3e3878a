"""Build script: the Python packages plus the optional fused-op extension ``autolora._C``.

The C++ CPU kernel is always built. The CUDA kernel is added only when the installed torch was built with CUDA and
``nvcc`` is available. Set ``AUTOLORA_NO_EXT=1`` to skip the extension entirely (the pure-PyTorch reference is used).
Install with ``pip install --no-build-isolation -e .`` so the build sees the installed torch.
"""
import glob
import os
import shutil

from setuptools import setup


def extension_modules():
    if os.environ.get("AUTOLORA_NO_EXT") == "1":
        return [], {}
    import torch
    from torch.utils.cpp_extension import BuildExtension, CppExtension, CUDAExtension

    sources = sorted(glob.glob(os.path.join("csrc", "*.cpp")))
    if not sources:
        return [], {}
    cuda_sources = sorted(glob.glob(os.path.join("csrc", "cuda", "*.cu")))
    use_cuda = bool(cuda_sources) and torch.version.cuda is not None and shutil.which("nvcc") is not None
    extra = {"cxx": ["-O3", "-fopenmp"]}
    if use_cuda:
        extra["nvcc"] = ["-O3"]
        ext = CUDAExtension("autolora._C", sources + cuda_sources, extra_compile_args=extra,
                            extra_link_args=["-fopenmp"])
    else:
        ext = CppExtension("autolora._C", sources, extra_compile_args=extra, extra_link_args=["-fopenmp"])
    return [ext], {"build_ext": BuildExtension.with_options(use_ninja=shutil.which("ninja") is not None)}


ext_modules, cmdclass = extension_modules()
setup(ext_modules=ext_modules, cmdclass=cmdclass)
