"""Memorization audit: is a synthetic image a copy of a training image?

Three kinds of evidence, each recorded per image, any of which flags it:

1. perceptual hash (`phash`): exact, resized, re-encoded and slightly noised copies stay within a few bits;
2. local-feature geometric verification: SIFT keypoints matched with Lowe's ratio test, then RANSAC fits one
   affine map; many agreeing matches mean the same physical structure (a crop, a shifted or rescaled copy, a
   partial copy). Dermoscopy is smooth, so SIFT runs with a low contrast threshold on a CLAHE-equalized image;
3. embedding cosine similarity from the pluggable extractor: recorded always, flags only with a threshold
   calibrated for that extractor (a random-init network ranks everything as similar).

Checking every pair geometrically is too slow for thousands of images, so each synthetic image is verified
against a shortlist: the training images that collect the most ratio-test votes in one approximate-nearest-
neighbour index over all training descriptors (independent of the extractor), plus the top ones by cosine and
by hash distance.
"""

from __future__ import annotations

import hashlib
from collections.abc import Sequence
from dataclasses import dataclass

import cv2
import numpy as np

from dermt2im_hub.quality.config import MemorizationConfig
from dermt2im_hub.quality.phash import hamming_matrix, phash

_LOCAL_SIDE = 320  # local features are found on the image rescaled to this longer side
_RATIO = 0.75  # Lowe's ratio test
_RANSAC_PIXELS = 3.0
_DARK_RIM = 30  # grey level: no keypoints on the black rim of a dermatoscope (every rim looks alike)
_FLANN_KDTREE = 1
_MAX_ANISOTROPY = 3.0


@dataclass
class LocalFeatures:
    points: np.ndarray  # (n, 2) float32, in the rescaled image
    descriptors: np.ndarray  # (n, 128) uint8 SIFT

    def __len__(self) -> int:
        return len(self.points)


def local_features(rgb: np.ndarray, count: int = 300) -> LocalFeatures:
    gray = cv2.cvtColor(np.ascontiguousarray(rgb[..., :3]), cv2.COLOR_RGB2GRAY)
    scale = _LOCAL_SIDE / max(gray.shape)
    gray = cv2.resize(gray, (max(1, round(gray.shape[1] * scale)), max(1, round(gray.shape[0] * scale))),
                      interpolation=cv2.INTER_AREA if scale < 1 else cv2.INTER_LINEAR)
    mask = cv2.erode((gray > _DARK_RIM).astype(np.uint8) * 255, np.ones((9, 9), np.uint8))
    gray = cv2.createCLAHE(clipLimit=2.0, tileGridSize=(8, 8)).apply(gray)
    sift = cv2.SIFT_create(nfeatures=count, contrastThreshold=0.01)
    keypoints, descriptors = sift.detectAndCompute(gray, mask)
    if descriptors is None or not keypoints:
        return LocalFeatures(np.zeros((0, 2), np.float32), np.zeros((0, 128), np.uint8))
    points = np.array([kp.pt for kp in keypoints], np.float32)
    return LocalFeatures(points, np.clip(descriptors, 0, 255).astype(np.uint8))


def _one_to_one(pairs) -> list:
    """Ratio-test survivors, at most one per training keypoint: many-to-one matches let RANSAC fit a map that
    squashes the image onto one point and 'agrees' with all of them."""
    best: dict = {}
    for pair in pairs:
        if len(pair) == 2 and pair[0].distance < _RATIO * pair[1].distance:
            match = pair[0]
            if match.trainIdx not in best or best[match.trainIdx].distance > match.distance:
                best[match.trainIdx] = match
    return list(best.values())


def _plausible_copy_map(affine: np.ndarray) -> bool:
    """A crop/resize/shift keeps orientation, scales within [1/10, 10] and distorts the aspect at most 3:1."""
    linear = affine[:, :2]
    stretch = np.linalg.svd(linear, compute_uv=False)
    return bool(np.linalg.det(linear) > 0 and stretch[0] <= _MAX_ANISOTROPY * stretch[1]
                and 0.1 <= np.sqrt(stretch[0] * stretch[1]) <= 10.0)


def matching_inliers(query: LocalFeatures, train: LocalFeatures) -> int:
    """Matches that agree on one plausible affine map between the two images (0 when there is none)."""
    if len(query) < 3 or len(train) < 3:
        return 0
    matcher = cv2.BFMatcher(cv2.NORM_L2)
    good = _one_to_one(matcher.knnMatch(query.descriptors.astype(np.float32),
                                        train.descriptors.astype(np.float32), k=2))
    if len(good) < 4:
        return 0
    source = query.points[[m.queryIdx for m in good]]
    target = train.points[[m.trainIdx for m in good]]
    affine, inliers = cv2.estimateAffine2D(source, target, method=cv2.RANSAC, ransacReprojThreshold=_RANSAC_PIXELS)
    if affine is None or inliers is None or not _plausible_copy_map(affine):
        return 0
    return int(inliers.sum())


@dataclass
class Query:
    """A synthetic image as the audit sees it: the image and, optionally, its mirror image. Fine-tuning often
    flips training images at random, so a memorized image may come back mirrored; SIFT descriptors and the hash
    are not mirror-invariant, hence a second view."""

    hashes: np.ndarray  # (views, HASH_BYTES)
    features: list[LocalFeatures]


def make_query(rgb: np.ndarray, config: MemorizationConfig) -> Query:
    views = [rgb, np.ascontiguousarray(rgb[:, ::-1])] if config.check_mirrored else [rgb]
    return Query(np.stack([phash(view) for view in views]), [local_features(view, config.local_features)
                                                           for view in views])


def _unit(vectors: np.ndarray) -> np.ndarray:
    vectors = np.asarray(vectors, np.float32)
    return vectors / np.maximum(np.linalg.norm(vectors, axis=1, keepdims=True), 1e-12)


@dataclass
class Nearest:
    """The closest training image by each kind of evidence (indices into the reference), before any threshold:
    verdicts come from `evidence(config)`, so stored measurements can be judged again with other thresholds."""

    hash_index: int
    hash_distance: int  # bits of 256
    cosine_index: int
    cosine: float
    match_index: int | None  # the shortlisted image with the most verified matches
    match_inliers: int

    def evidence(self, config: MemorizationConfig) -> list[str]:
        found = []
        if self.match_index is not None and self.match_inliers >= config.min_match_inliers:
            found.append("local_match")
        if self.hash_distance <= config.max_phash_distance:
            found.append("phash")
        if config.min_cosine is not None and self.cosine >= config.min_cosine:
            found.append("cosine")
        return found

    def partner(self, config: MemorizationConfig) -> int:
        """The training image behind the strongest evidence (match > hash > cosine); the cosine-nearest when none."""
        evidence = self.evidence(config)
        if "local_match" in evidence:
            return int(self.match_index)
        if "phash" in evidence:
            return self.hash_index
        return self.cosine_index

    def row(self, ids: Sequence[str], config: MemorizationConfig) -> dict:
        evidence = self.evidence(config)
        return {"mem_nearest_id": ids[self.partner(config)], "mem_phash_distance": self.hash_distance,
                "mem_cosine": round(self.cosine, 5), "mem_match_inliers": self.match_inliers,
                "mem_evidence": evidence, "mem_flagged": bool(evidence)}


class TrainingReference:
    """Everything the audit needs about the training images, built once: ids, hashes, unit embeddings,
    local features and a vote index over all local descriptors."""

    def __init__(self, ids: Sequence[str], hashes: np.ndarray, embeddings: np.ndarray,
                 features: Sequence[LocalFeatures], config: MemorizationConfig):
        self.ids = list(ids)
        self.hashes = np.asarray(hashes, np.uint8)
        self.embeddings = _unit(embeddings)
        self.features = list(features)
        self.config = config
        counts = [len(f) for f in self.features]
        self._owner = np.repeat(np.arange(len(counts)), counts)
        self._index = None
        if sum(counts) >= 2:
            stacked = np.concatenate([f.descriptors for f in self.features if len(f)]).astype(np.float32)
            self._index = cv2.flann_Index(stacked, {"algorithm": _FLANN_KDTREE, "trees": 4})

    def __len__(self) -> int:
        return len(self.ids)

    def _votes(self, query: LocalFeatures) -> np.ndarray:
        votes = np.zeros(len(self.ids), np.int32)
        if self._index is None or len(query) == 0:
            return votes
        indices, distances = self._index.knnSearch(query.descriptors.astype(np.float32), 2, params={"checks": 64})
        # FLANN returns squared L2 distances: the ratio test compares squared ratios
        good = distances[:, 0] < (_RATIO ** 2) * distances[:, 1]
        np.add.at(votes, self._owner[indices[good, 0]], 1)
        return votes

    def _shortlist(self, votes: np.ndarray, cosines: np.ndarray, distances: np.ndarray) -> list[int]:
        k = self.config.candidates
        by_votes = [i for i in np.argsort(-votes, kind="stable")[:k] if votes[i] > 0]
        by_cosine = np.argsort(-cosines, kind="stable")[:k]
        by_hash = np.argsort(distances, kind="stable")[:k]
        return list(dict.fromkeys(int(i) for i in [*by_votes, *by_cosine, *by_hash]))

    def audit(self, queries: Sequence[Query], embeddings: np.ndarray) -> list[Nearest]:
        """The nearest training images of each synthetic image of a batch (over all its views)."""
        cosines = _unit(embeddings) @ self.embeddings.T
        return [self._nearest(query, cosines[i]) for i, query in enumerate(queries)]

    def _nearest(self, query: Query, cosines: np.ndarray) -> Nearest:
        distances = hamming_matrix(query.hashes, self.hashes).min(axis=0)
        votes = sum(self._votes(view) for view in query.features)
        inliers = {i: max(matching_inliers(view, self.features[i]) for view in query.features)
                   for i in self._shortlist(votes, cosines, distances)}
        best_match = max(inliers, key=inliers.get) if inliers else None
        nearest_hash, nearest_cosine = int(np.argmin(distances)), int(np.argmax(cosines))
        return Nearest(nearest_hash, int(distances[nearest_hash]), nearest_cosine, float(cosines[nearest_cosine]),
                       best_match, int(inliers.get(best_match, 0)))

    def digest(self) -> str:
        """Identifies the reference's content (for caching audit results against it)."""
        digest = hashlib.sha256("\n".join(self.ids).encode())
        digest.update(self.hashes.tobytes())
        digest.update(np.ascontiguousarray(self.embeddings, np.float32).tobytes())
        digest.update(f"{self.config.local_features} {self.config.candidates} {self.config.check_mirrored}".encode())
        return digest.hexdigest()

    def nearest_real_cosines(self) -> np.ndarray:
        """Each training image's cosine to its nearest other training image (calibration for min_cosine)."""
        if len(self.ids) < 2:
            return np.zeros(0, np.float32)
        sims = self.embeddings @ self.embeddings.T
        np.fill_diagonal(sims, -np.inf)
        return sims.max(axis=1)
