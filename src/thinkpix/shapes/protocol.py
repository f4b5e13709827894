"""Shapes-GenEval evaluation protocols: which prompts, how many images each, and which noise each image gets.

Two protocols share the held-out prompt set of :func:`~thinkpix.shapes.prompts.evaluation_metadata` (the
held-out bindings stay held out; ``single_object`` and ``two_object`` carry no binding) and GenEval's six tags:

``v1``
    The original protocol: 2 images per prompt (172 images: ``single_object`` and ``counting`` have 4 prompts,
    so 8 images each, while ``color_attr`` has 92), noise drawn per *batch* from ``seed + offset`` of the
    batch's first image, so an image's noise depends on the batch size and on the prompts before it.
``v2``
    Balanced: each tag gets at least ``min_images`` (184) scored images through more samples per prompt where
    the tag has few prompts -- ``max(4, ceil(min_images / prompts_in_tag))`` samples (GenEval's 4 at least):
    46 for the 4 ``single_object`` and 4 ``counting`` prompts, 23 for the 8 ``colors``, 16 for the 12
    ``two_object`` and 12 ``position`` prompts, 4 for the 46 ``color_attr`` ones; 1,120 images a seed.
    Every image's initial noise comes from its own generator seeded by :func:`image_seed` ``(seed, prompt,
    sample index)``, so two rows sampled with the same seed see the same noise image by image, whatever the
    batch size or order; per-image verdicts of two rows pair up and can be differenced
    (:mod:`benchmarks.stats`).

API (what :mod:`thinkpix.eval.geneval` and the benchmarks use)::

    protocol = get_protocol("v2")          # ValueError naming the allowed names otherwise
    for job in protocol.jobs(seed=0):      # ImageJob(prompt_index, sample_index, metadata, noise_seed)
        ...
    protocol.images_per_tag()              # {"single_object": 184, "two_object": 192, ...}

An image is identified by ``(prompt_index, sample_index)``; ``prompt_index`` indexes ``protocol.records()``.
"""

from __future__ import annotations

import hashlib
import math
from collections import Counter
from dataclasses import dataclass

from thinkpix.shapes.metadata import TAGS
from thinkpix.shapes.prompts import evaluation_metadata
from thinkpix.shapes.scene import check_choice

V2_MIN_IMAGES_PER_TAG = 184
"""Images per tag in v2: the base's overall then has a 95% half-width of about 2.2 points on one seed
(``docs/results/shapes_scorer.md``, section "Shapes-GenEval v2")."""
GENEVAL_SAMPLES = 4


def image_seed(seed: int, prompt: str, sample_index: int) -> int:
    """A 63-bit generator seed for one image, a hash of the run seed, the prompt text and the sample index:
    the same image gets the same noise in every row and every batch layout."""
    digest = hashlib.sha256(f"shapes-geneval-v2/{seed}/{prompt}/{sample_index}".encode()).digest()
    return int.from_bytes(digest[:8], "little") >> 1


@dataclass(frozen=True)
class ImageJob:
    """One image to sample: its prompt (index into the protocol's records), sample index and noise seed
    (``None`` for v1, whose noise is per batch)."""

    prompt_index: int
    sample_index: int
    metadata: dict
    noise_seed: int | None


@dataclass(frozen=True)
class Protocol:
    """A prompt set with a number of samples per prompt and a noise rule (``per_image`` or per batch)."""

    name: str
    min_images_per_tag: int | None  # None: a fixed ``samples`` for every prompt
    samples: int = 2
    per_image_noise: bool = False

    def records(self) -> list[dict]:
        return evaluation_metadata()

    def samples_per_prompt(self) -> dict[str, int]:
        """Samples per prompt, by tag."""
        counts = Counter(meta["tag"] for meta in self.records())
        if self.min_images_per_tag is None:
            return {tag: self.samples for tag in TAGS if tag in counts}
        return {tag: max(GENEVAL_SAMPLES, math.ceil(self.min_images_per_tag / counts[tag]))
                for tag in TAGS if tag in counts}

    def images_per_tag(self) -> dict[str, int]:
        per_prompt = self.samples_per_prompt()
        counts = Counter(meta["tag"] for meta in self.records())
        return {tag: counts[tag] * per_prompt[tag] for tag in per_prompt}

    def jobs(self, seed: int = 0) -> list[ImageJob]:
        """Every image of one seed's run, prompt by prompt."""
        per_prompt = self.samples_per_prompt()
        return [ImageJob(i, n, meta, image_seed(seed, meta["prompt"], n) if self.per_image_noise else None)
                for i, meta in enumerate(self.records()) for n in range(per_prompt[meta["tag"]])]


PROTOCOLS = {
    "v1": Protocol("v1", None, samples=2),
    "v2": Protocol("v2", V2_MIN_IMAGES_PER_TAG, per_image_noise=True),
}
DEFAULT_PROTOCOL = "v2"


def get_protocol(name: str) -> Protocol:
    """The protocol called ``name``; ``ValueError`` naming the allowed names otherwise."""
    check_choice("protocol", name, tuple(PROTOCOLS))
    return PROTOCOLS[name]
