"""The Hub layer: model/dataset cards rendered from manifests, one publishing gate, private-by-default pushes,
Hub-or-local inputs."""

from dermt2im_hub.hub.cards import NOT_RECORDED, CardError, build_card, card_kind, card_repo_type, render_card
from dermt2im_hub.hub.gate import (
    IGNORE_PATTERNS,
    Permissions,
    PushError,
    PushPlan,
    UnsafeWeightsError,
    files_to_upload,
    review,
)
from dermt2im_hub.hub.push import push_folder
from dermt2im_hub.hub.resolve import HubInputError, resolve_file, resolve_folder, split_revision

__all__ = [
    "IGNORE_PATTERNS", "NOT_RECORDED", "CardError", "HubInputError", "Permissions", "PushError", "PushPlan",
    "UnsafeWeightsError", "build_card", "card_kind", "card_repo_type", "files_to_upload", "push_folder",
    "render_card", "resolve_file", "resolve_folder", "review", "split_revision",
]
