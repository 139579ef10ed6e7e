"""The catalogue's category tree (masterCategory > subCategory > articleType) and the prior's components.

A model trained with the category prior has one Gaussian component per (subCategory, articleType)
with enough training images; rarer articleTypes of a kept subCategory share a `(other)` component.
SubCategories with too few images to learn from are left out of training, with the reason.
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Sequence
from dataclasses import dataclass, field

import numpy as np

OTHER = "(other)"
MIN_SUBCATEGORY_IMAGES = 50
MIN_COMPONENT_IMAGES = 20

Component = tuple[str, str, str]  # (masterCategory, subCategory, articleType or OTHER)


@dataclass(frozen=True)
class Taxonomy:
    components: tuple[Component, ...]
    left_out: dict[str, str] = field(default_factory=dict)  # subCategory -> why

    @classmethod
    def fit(
        cls,
        master_categories: Sequence[str],
        sub_categories: Sequence[str],
        article_types: Sequence[str],
        is_train: np.ndarray,
        min_subcategory_images: int = MIN_SUBCATEGORY_IMAGES,
        min_component_images: int = MIN_COMPONENT_IMAGES,
    ) -> Taxonomy:
        """Components from labelled items: a subCategory is kept with at least
        `min_subcategory_images` usable images in the whole catalogue; an articleType gets its own
        component with at least `min_component_images` training images."""
        subs = np.asarray(sub_categories)
        masters = np.asarray(master_categories)
        articles = np.asarray(article_types)
        is_train = np.asarray(is_train, bool)
        sizes = Counter(s for s in subs.tolist() if s)
        left_out = {
            sub: f"{count} images, fewer than {min_subcategory_images} to learn a category from"
            for sub, count in sorted(sizes.items())
            if count < min_subcategory_images
        }
        components: list[Component] = []
        for sub in sorted(s for s in sizes if s not in left_out):
            members = subs == sub
            master = Counter(masters[members].tolist()).most_common(1)[0][0]
            in_train = Counter(articles[members & is_train].tolist())
            own = sorted(a for a, n in in_train.items() if a and n >= min_component_images)
            components += [(master, sub, article) for article in own]
            if sum(n for a, n in in_train.items() if a not in own) or not own:
                components.append((master, sub, OTHER))
        return cls(tuple(components), left_out)

    @classmethod
    def from_json(cls, data: dict) -> Taxonomy:
        return cls(
            tuple(tuple(c) for c in data["components"]),  # type: ignore[misc]
            dict(data.get("left_out", {})),
        )

    def to_json(self) -> dict:
        return {"components": [list(c) for c in self.components], "left_out": self.left_out}

    def __len__(self) -> int:
        return len(self.components)

    @property
    def sub_categories(self) -> tuple[str, ...]:
        return tuple(dict.fromkeys(sub for _, sub, _ in self.components))

    def master_of(self) -> dict[str, str]:
        return {sub: master for master, sub, _ in self.components}

    def component_index(
        self, sub_categories: Sequence[str], article_types: Sequence[str]
    ) -> np.ndarray:
        """Each item's component, or -1 for items whose subCategory is not in the taxonomy."""
        lookup = {(sub, article): i for i, (_, sub, article) in enumerate(self.components)}
        return np.array(
            [
                lookup.get((sub, article), lookup.get((sub, OTHER), -1))
                for sub, article in zip(sub_categories, article_types, strict=True)
            ],
            dtype=np.int32,
        )
