"""Items whose category the shared partitions do not name (a live update, an item written after
the partitions were derived) are indexed by nearest centre instead of failing the build."""

from __future__ import annotations

import numpy as np

from atelier.sharded_generation import named_partition


def test_known_labels_keep_their_partition_and_strays_go_to_the_nearest_centre():
    names = ("Bags", "Shoes")
    centres = np.array([[0.0, 0.0], [10.0, 10.0]], np.float32)
    labels = np.array(["Shoes", "Bags", "Capes", "Capes"])
    vectors = np.array([[0.0, 0.0], [10.0, 10.0], [9.0, 9.5], [0.5, -1.0]], np.float32)
    partition = named_partition(labels, names, centres, vectors)
    assert partition.labels.tolist() == [1, 0, 1, 0]
    assert partition.names == names and np.array_equal(partition.centres, centres)
