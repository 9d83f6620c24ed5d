# cython: language_level=3, boundscheck=False, wraparound=False, cdivision=True
# cython: initializedcheck=False, nonecheck=False, infer_types=False, embedsignature=True
"""The kernels of src/_cy.pyx compiled with AVX2 (setup.py adds -mavx2); fastpool/_cython.py
imports this module instead of ``fastpool._cy`` when the CPU supports AVX2."""

include "_kernels.pxi"
