"""Counter-based random draws: every augmentation draw is a pure function of
(run seed, epoch, sample index, stream, draw number), so it does not depend on which thread,
worker or process handles the sample, nor on what was drawn before.

The generator is splitmix64 (Steele et al., "Fast splittable pseudorandom number generators",
2014) used as a hash: key = mix(seed, epoch, index, stream), draw k = mix(key + k). The same
functions run compiled (numba, inside FFCV's decoders) and in Python (the torchvision backend and
the tests), and give the same numbers in both.

`EpochCell` carries (seed, epoch) into FFCV's compiled pipeline: FFCV freezes an operation's
closure at compile time and passes only the batch indices at run time, so the compiled code reads
the two numbers from a fixed address that `Batches.set_epoch` rewrites before each epoch.
"""
from __future__ import annotations

import numpy as np
from llvmlite import ir
from numba import njit, types
from numba.extending import intrinsic

# Streams: one per kind of draw, so adding draws to one never shifts another's.
CROP, FLIP, RAND_AUGMENT, ERASE, TORCHVISION = 1, 2, 3, 4, 5
# The ADE20K train pipeline's random rescale and photometric distortion (pipeline/transfer/ade20k.py).
RESCALE, PHOTOMETRIC = 6, 7

_GOLDEN = 0x9E3779B97F4A7C15

# The decorator of every compiled augmentation kernel (here, randaugment.py, ffcv_ops.py). A numba
# function that leaves `fastmath` / `error_model` unset is compiled with the flags of the first
# compiled caller, and FFCV compiles its pipeline with fastmath=True: a kernel first compiled
# inside a loader would fuse multiplies and adds, its floats would no longer be Pillow's or the
# Python draws', and numba's on-disk cache would keep whichever version came first. Stated here,
# they are the same in every process and caller. error_model "numpy" is FFCV's (no division by
# zero checks; the kernels never divide by zero).
kernel = njit(cache=True, nogil=True, fastmath=False, error_model="numpy")


@kernel
def _mix(z):
    z = np.uint64(z)
    z = (z ^ (z >> np.uint64(30))) * np.uint64(0xBF58476D1CE4E5B9)
    z = (z ^ (z >> np.uint64(27))) * np.uint64(0x94D049BB133111EB)
    return z ^ (z >> np.uint64(31))


@kernel
def sample_key(seed, epoch, index, stream):
    """The key of one sample's draws in one stream (uint64)."""
    g = np.uint64(_GOLDEN)
    k = _mix(np.uint64(seed) * g + np.uint64(1))
    k = _mix(k ^ (np.uint64(epoch) * g + np.uint64(2)))
    k = _mix(k ^ (np.uint64(index) * g + np.uint64(3)))
    return _mix(k ^ (np.uint64(stream) * g + np.uint64(4)))


@kernel
def uniform(key, k):
    """Draw number k of `key`: a float64 uniform in [0, 1) (53 random bits)."""
    z = _mix(key + np.uint64(k) * np.uint64(_GOLDEN))
    return np.float64(z >> np.uint64(11)) * (1.0 / 9007199254740992.0)


@kernel
def gauss(key, k, mean, std):
    """A normal draw from draws k and k+1 (Box-Muller)."""
    u1 = 1.0 - uniform(key, k)  # (0, 1]: log is finite
    u2 = uniform(key, k + 1)
    return mean + std * np.sqrt(-2.0 * np.log(u1)) * np.cos(2.0 * np.pi * u2)


def python_key(seed: int, epoch: int, index: int, stream: int) -> int:
    return int(sample_key(seed, epoch, index, stream))


@intrinsic
def _load_i64(typingctx, address):
    """Read the int64 at `address` (an integer) in compiled code."""
    if not isinstance(address, types.Integer):
        return None

    def codegen(context, builder, signature, args):
        ptr = builder.inttoptr(args[0], ir.IntType(64).as_pointer())
        return builder.load_atomic(ptr, ordering="monotonic", align=8)

    return types.int64(address), codegen


class EpochCell:
    """(seed, epoch) at a fixed address, readable from FFCV's compiled operations."""

    def __init__(self, seed: int = 0, epoch: int = 0):
        self.values = np.zeros(2, dtype=np.int64)  # kept alive with the cell: compiled code holds its address
        self.set(seed, epoch)

    def set(self, seed: int, epoch: int) -> None:
        if seed < 0 or epoch < 0:
            raise ValueError(f"seed {seed} and epoch {epoch} must be >= 0")
        self.values[0], self.values[1] = seed, epoch

    @property
    def seed(self) -> int:
        return int(self.values[0])

    @property
    def epoch(self) -> int:
        return int(self.values[1])

    def reader(self):
        """A compiled function () -> (seed, epoch) reading this cell's current values."""
        seed_at = int(self.values.ctypes.data)
        epoch_at = seed_at + 8

        @njit(nogil=True)
        def read():
            return _load_i64(seed_at), _load_i64(epoch_at)

        return read
