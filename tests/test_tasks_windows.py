"""WindowMeans: window means of a per-token value fed in arbitrary pieces equal the means of the whole."""

import numpy as np
import pytest

from titans_cli.tasks.surprise import WindowMeans


@pytest.mark.parametrize("seed", range(5))
def test_window_means_fed_in_random_pieces_equal_whole_means(seed):
    rng = np.random.default_rng(seed)
    for _ in range(40):
        window, n = int(rng.integers(1, 60)), int(rng.integers(0, 500))
        values = rng.random(n).astype(np.float32)
        means = WindowMeans(window)
        got_index, got_mean, position = [], [], 0
        while position < n:
            size = int(rng.integers(0, 80))  # empty pieces too
            index, mean = means.add(position, values[position : position + size])
            got_index += index.tolist()
            got_mean += mean.tolist()
            position += size
        index, mean = means.flush()
        got_index += index.tolist()
        got_mean += mean.tolist()
        expected_index = list(range(-(-n // window)))
        expected = [values[i * window : (i + 1) * window].astype(np.float64).mean() for i in expected_index]
        assert got_index == expected_index
        np.testing.assert_allclose(got_mean, expected, rtol=1e-12)
