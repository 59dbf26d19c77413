"""The compiled and Numba backends of fastloss."""

# Below this many elements a kernel call runs on the calling thread alone: waking a worker
# (~10-50 us) would cost more than it saves.  The C kernels use the same number
# (FL_MIN_PARALLEL_ELEMENTS in src/threads.c; tests/test_guarantees.py checks that they agree).
MIN_PARALLEL_ELEMENTS = 32768
