"""Stage 4: synthetic-data quality and privacy checks (artifact filter, memorization audit, fidelity, skin tone)."""

from dermt2im_hub.quality.config import (
    ArtifactConfig,
    FeatureConfig,
    FidelityConfig,
    MemorizationConfig,
    QualityConfig,
)
from dermt2im_hub.quality.run import QAResult, run_qa

__all__ = ["ArtifactConfig", "FeatureConfig", "FidelityConfig", "MemorizationConfig", "QAResult", "QualityConfig",
           "run_qa"]
