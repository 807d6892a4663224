"""Fidelity by finding: the whole-set distances between the real and generated images of each finding."""

import numpy as np
import pytest

from cxrgen.evaluate import fidelity
from cxrgen.evaluate.labels import finding_names, images_by_finding

# -- labels -------------------------------------------------------------------------------------------------------


def test_findings_are_named_as_the_vocabulary_compares_them():
    rows = [
        {"findings": [{"label": "Pleural_Effusion", "locations": ["left"]}, {"label": "unchanged"}]},
        {"findings": [{"label": "effusion"}, {"label": "Cardiomegaly"}]},
        {"findings": [{"label": "No Finding"}]},
        {"findings": []},
        {"text": "a raw prompt"},
        {"findings": [{"label": "exclude"}, {"label": "suboptimal study"}]},
    ]
    assert finding_names(rows[0]) == {"pleural effusion"}
    groups = images_by_finding(rows)
    assert {k: v.tolist() for k, v in groups.items()} == {
        "pleural effusion": [0, 1],
        "cardiomegaly": [1],
        "normal": [2],
    }


# -- the distances ------------------------------------------------------------------------------------------------


@pytest.mark.parametrize("sizes", [(30, 40), (60, 25)])
def test_frechet_in_the_sets_own_size_matches_the_feature_space_one(sizes):
    """The small-set route (an n x n problem) gives the dim x dim route's FID, with groups left out of either set."""
    rng = np.random.default_rng(1)
    a, b = rng.normal(size=(sizes[0], 50)), rng.normal(size=(sizes[1], 50)) * 1.3 + 0.2
    gram, full = fidelity._FrechetByGram(a, b), fidelity._FrechetByGroups(a, b)
    assert gram() == pytest.approx(fidelity.fid(a, b), rel=1e-7)
    for left_a, left_b in ((np.array([1, 5, 7]), None), (None, np.array([0, sizes[1] - 1]))):
        assert gram(left_a, left_b) == pytest.approx(full(left_a, left_b), rel=1e-7)
    left_a, left_b = np.array([2, 3]), np.array([4])
    assert gram(left_a, left_b) == pytest.approx(fidelity.fid(np.delete(a, left_a, 0), np.delete(b, left_b, 0)))
    assert isinstance(fidelity._frechet_by_groups(a, b), fidelity._FrechetByGram)
    assert isinstance(fidelity._frechet_by_groups(a[:, :4], b[:, :4]), fidelity._FrechetByGroups)
