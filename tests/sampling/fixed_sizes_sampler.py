"""A test sampler named by file path: uniform prompts with a fixed cycle of ragged group sizes."""

from rlreason.data.sampler import UniformSampler
from rlreason.sampling.base import PromptDraw


class FixedSizes(UniformSampler):
    """Uniform prompts; group sizes cycle through ``sizes`` (ragged groups end to end)."""

    def __init__(self, ctx, *, sizes=(2, 6, 1, 7)):
        super().__init__(ctx)
        self.sizes = list(sizes)

    def next(self, step, num_prompts):
        draw = super().next(step, num_prompts)
        return PromptDraw(draw.indices, [self.sizes[i % len(self.sizes)] for i in range(len(draw.indices))])
