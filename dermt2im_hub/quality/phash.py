"""A 256-bit DCT perceptual hash and Hamming distances between sets of hashes.

The classic 64-bit pHash (8x8 low frequencies) is too coarse for dermoscopy: nearly every image is a dark
blob in the middle of lighter skin, and distinct Derm-T2IM samples collide within 4 bits. Keeping 16x16 low
frequencies of a 64x64 grey thumbnail separates them: distinct samples differ in 48 bits or more, while
resized, JPEG-recompressed or slightly noised copies stay within about 8.
"""

from __future__ import annotations

import cv2
import numpy as np

HASH_SIDE = 16  # 16 x 16 = 256 bits
HASH_BYTES = HASH_SIDE * HASH_SIDE // 8


def phash(rgb: np.ndarray) -> np.ndarray:
    """Packed bits (uint8, HASH_BYTES long) of one RGB uint8 image: low DCT coefficients above their median."""
    gray = cv2.cvtColor(np.ascontiguousarray(rgb[..., :3]), cv2.COLOR_RGB2GRAY)
    thumb = cv2.resize(gray, (4 * HASH_SIDE, 4 * HASH_SIDE), interpolation=cv2.INTER_AREA).astype(np.float32)
    low = cv2.dct(thumb)[:HASH_SIDE, :HASH_SIDE].ravel()
    # the DC term is left out of the median: it only says how bright the image is
    return np.packbits(low > np.median(low[1:]))


def hamming_matrix(left: np.ndarray, right: np.ndarray, chunk: int = 256) -> np.ndarray:
    """(len(left), len(right)) bit distances between two stacks of packed hashes."""
    left = np.asarray(left, np.uint8).reshape(-1, HASH_BYTES)
    right = np.asarray(right, np.uint8).reshape(-1, HASH_BYTES)
    out = np.empty((len(left), len(right)), np.int32)
    for start in range(0, len(left), chunk):
        block = left[start:start + chunk, None, :] ^ right[None, :, :]
        out[start:start + chunk] = np.bitwise_count(block).sum(axis=-1)
    return out
