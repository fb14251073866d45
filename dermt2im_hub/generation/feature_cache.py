"""Feature caching across denoising steps (the DeepCache idea, written here for diffusers' UNet2DConditionModel).

Adjacent denoising steps change the UNet's deep, low-resolution features very little, while the outermost
layers (full resolution, fed by the skip connection from `conv_in`) carry what changes. So: run the whole UNet
every `interval`-th call, and on the calls in between run only a shallow branch - `conv_in`, the first
`depth - 1` layers of the first down block, the last `depth` layers of the last up block and the output layers
- on top of the deep feature the last full call handed to that branch.

How it is done, without touching diffusers' forward code: the modules outside the branch (the rest of the first
down block and of the last up block, every deeper down/up block and the mid block) get a wrapper around their
`forward`. On a full call a wrapper runs the module and remembers its output; on a shallow call it returns the
remembered output without computing anything. Only the module that feeds the branch (the "feeder") keeps its
real output; the others keep zero-stride placeholders of the right shapes, whose values reach nothing the
branch computes. The UNet's own forward therefore runs unchanged, and anything inside the modules - fused
LoRA weights, attention processors, batched CFG rows - stays as it was.

A call counts as one step whatever the sampler: Heun's two UNet calls per step are two calls, and batched CFG
is one call. `reset()` (done before every pipeline call by the generator) makes the next call a full one; a
call whose latent shape, dtype or device differs from the cached one is always full.

    cache = FeatureCache(pipe.unet, interval=3, depth=1)   # attach
    cache.reset(); images = pipe(...)                       # full, shallow, shallow, full, ...
    cache.detach()                                          # the UNet is as before
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from dermt2im_hub.config import ConfigError


@dataclass(frozen=True)
class FeatureCacheSettings:
    """What goes into a manifest, a metadata row and the infotext."""

    interval: int
    depth: int

    def to_row(self) -> dict[str, int]:
        return {"interval": self.interval, "depth": self.depth}

    def infotext(self) -> str:
        return f"interval {self.interval}, depth {self.depth}"


def max_depth(unet) -> int:
    """The deepest shallow branch the UNet allows: every layer of its outermost resolution level."""
    return len(unet.down_blocks[0].resnets) + 1


class FeatureCache:
    """Attach to a UNet2DConditionModel (eager or the `_orig_mod` of a compiled one); see the module doc."""

    def __init__(self, unet, interval: int, depth: int = 1):
        import torch

        unet = getattr(unet, "_orig_mod", unet)
        if interval < 1:
            raise ConfigError(f"feature cache interval must be >= 1, got {interval}")
        check_unet(unet, depth)
        self.settings = FeatureCacheSettings(interval, depth)
        self.full_calls = 0
        self.shallow_calls = 0
        self._calls = 0
        self._reuse = False
        self._key: tuple | None = None  # (shape, dtype, device) of the latents the cache was filled with
        self._outputs: dict[int, Any] = {}
        # Under torch.compile the step counter stays out of the graph (tracing it would compile once per step
        # value until dynamo's recompile limit sends the UNet back to eager); graphs see only the _reuse flag.
        self._decide = torch.compiler.disable(self._decide_eagerly)
        deep, feeder = _deep_modules(unet, depth)
        self._wrapped = [self._wrap(unet.conv_in, self._start_call, None)]
        self._wrapped += [self._wrap(module, self._cached_call, (slot, module is feeder))
                          for slot, module in enumerate(deep)]

    # -------------------------------------------------------------------------------- public

    def reset(self) -> None:
        """Forget the cached features: the next UNet call runs in full (start of a new image batch)."""
        self._calls, self._reuse, self._key = 0, False, None
        self._outputs.clear()

    def detach(self) -> None:
        """Put the modules' own forward methods back and drop the cached tensors."""
        for module in self._wrapped:
            module.__dict__.pop("forward", None)
        self._wrapped = []
        self.reset()

    # -------------------------------------------------------------------------------- wrappers

    @staticmethod
    def _wrap(module, behaviour, slot):
        original = module.forward

        def forward(*args, **kwargs):
            return behaviour(original, slot, *args, **kwargs)

        module.forward = forward  # an instance attribute: nn.Module.__call__ looks it up first
        return module

    def _decide_eagerly(self, key: tuple) -> None:
        self._reuse = self._calls % self.settings.interval != 0 and key == self._key
        if not self._reuse:
            self._key = key
            self._outputs.clear()
        self._calls += 1
        if self._reuse:
            self.shallow_calls += 1
        else:
            self.full_calls += 1

    def _start_call(self, original, _, sample, *args, **kwargs):
        """`conv_in` runs first in every UNet call: decide here whether this call is full or shallow."""
        self._decide((tuple(sample.shape), sample.dtype, sample.device))
        return original(sample, *args, **kwargs)

    def _cached_call(self, original, slot, *args, **kwargs):
        index, is_feeder = slot
        if self._reuse:
            return self._outputs[index]
        output = original(*args, **kwargs)
        self._outputs[index] = output if is_feeder else _placeholders(output)
        return output


def _placeholders(output):
    """The output's structure with each tensor replaced by a zero-stride view of one zero (no memory)."""
    import torch
    from torch.utils._pytree import tree_map

    return tree_map(lambda t: t.new_zeros(()).expand(t.shape) if isinstance(t, torch.Tensor) else t, output)


def check_unet(unet, depth: int) -> None:
    """ConfigError unless feature caching at `depth` fits this UNet (so a run can refuse before it writes)."""
    unet = getattr(unet, "_orig_mod", unet)
    if not (hasattr(unet, "down_blocks") and hasattr(unet, "up_blocks") and hasattr(unet, "conv_in")):
        raise ConfigError(f"feature caching needs a UNet2DConditionModel, got {type(unet).__name__}")
    if len(unet.up_blocks) < 2:
        raise ConfigError("feature caching needs a UNet with at least two resolution levels")
    first, last = unet.down_blocks[0], unet.up_blocks[-1]
    if len(last.resnets) != len(first.resnets) + 1:
        raise ConfigError("feature caching expects the last up block to have one layer more than the first down "
                          f"block (SD1.5's layout); this UNet has {len(first.resnets)} and {len(last.resnets)}")
    if not 1 <= depth <= max_depth(unet):
        raise ConfigError(f"feature cache depth must be within 1..{max_depth(unet)} for this UNet, got {depth}")


def _layers(block, indices) -> list:
    attentions = getattr(block, "attentions", None)
    modules = []
    for j in indices:
        modules.append(block.resnets[j])
        if attentions is not None:
            modules.append(attentions[j])
    return modules


def _deep_modules(unet, depth: int) -> tuple[list, Any]:
    """(modules skipped on shallow calls, the one whose output feeds the shallow branch).

    Skip connections: conv_in's output, then one per layer of the first down block, then its downsampler's,
    ...; the last up block consumes them in reverse, its last layer taking conv_in's. A branch of depth d keeps
    the first d of them: conv_in, the first d-1 down layers, and the last d up layers."""
    first, last = unet.down_blocks[0], unet.up_blocks[-1]
    down_layers, up_layers = len(first.resnets), len(last.resnets)
    first_kept_up = up_layers - depth
    deep = _layers(first, range(depth - 1, down_layers))
    deep += list(first.downsamplers or [])
    deep += list(unet.down_blocks[1:])
    deep += [unet.mid_block] if unet.mid_block is not None else []
    deep += list(unet.up_blocks[:-1])
    deep += _layers(last, range(first_kept_up))
    feeder = _layers(last, [first_kept_up - 1])[-1] if first_kept_up > 0 else unet.up_blocks[-2]
    return deep, feeder
