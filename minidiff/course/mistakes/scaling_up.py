"""Chapter 11, Scaling up: the common mistakes of its exercises, each written out as the
wrong answer it gives (see `minidiff.course.mistakes`)."""

import numpy as np


MFU = {
    "the time multiplies where it divides: achieved FLOP/s is FLOPs per step over seconds per step":
        lambda flops, seconds, peak, devices: flops * seconds / (peak * devices),
    "the peak of one device: each device of the mesh adds its own peak":
        lambda flops, seconds, peak, devices: flops / seconds / peak,
    "a percentage: MFU is asked for as a fraction between 0 and 1":
        lambda flops, seconds, peak, devices: 100 * flops / seconds / (peak * devices),
}

BFLOAT16 = {
    "truncated, not rounded: keeping the top 16 bits rounds every value toward zero":
        lambda x: (np.asarray(x, np.float32).view(np.uint32) & np.uint32(0xFFFF0000)).view(np.float32),
}

ROWS_OF_DEVICE = {
    "every device holds the whole batch: data parallelism splits its rows":
        lambda batch_size, num_devices, device: (0, batch_size),
    "the stop is the last row: as in Python's slices, it is one past it":
        lambda batch_size, num_devices, device: (device * (batch_size // num_devices),
                                                 (device + 1) * (batch_size // num_devices) - 1),
}
