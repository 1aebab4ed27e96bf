"""Seam metrics on synthetic images with known seams, and on seam-free ones with the real or a
shifted (fake) plan — the metric must tell them apart before any result is trusted."""

from __future__ import annotations

import numpy as np
import pytest
from scipy import ndimage

from paradiff_gui.engine.analysis.seams import analyse, boundaries, heatmap
from paradiff_gui.engine.core.plan import TilePlan

H = W = 384
PLAN = TilePlan.create(H, W, overlap=32, tile=128)
TILES = [PLAN.image_rect(t) for t in PLAN.tiles]
_FAKE_PLAN = TilePlan.create(H, W, overlap=32, tile=100)  # a plan the image was not made with
FAKE = [_FAKE_PLAN.image_rect(t) for t in _FAKE_PLAN.tiles]
OWNER = np.asarray(PLAN.owner_index())
RNG = np.random.default_rng(0)
SMOOTH = ndimage.gaussian_filter(RNG.standard_normal((H, W)), 12) * 50  # a smooth "landscape"
TEXTURE = RNG.standard_normal((H, W)) * 0.5  # fine detail that would drown a naive gradient ratio
STEPS = (RNG.standard_normal(len(PLAN)) * 1.0)[OWNER]  # zone-by-zone offsets: hard seams


def test_seam_lines_are_boundaries_and_edges():
    fam = boundaries(TILES)
    assert fam["boundary"] == ([106, 192, 278], [106, 192, 278])
    assert fam["edge"][0] == [85, 128, 171, 213, 256, 299]


@pytest.mark.parametrize("texture", [0, 1])
def test_seam_free_image_scores_about_one_with_real_and_fake_plans(texture):
    img = SMOOTH + texture * TEXTURE
    for tiles in (TILES, FAKE):
        r = analyse(img, tiles)
        assert 0.85 < r.seam_ratio < 1.1


@pytest.mark.parametrize("texture", [0, 1])
def test_hard_seams_score_high_only_on_their_own_plan(texture):
    img = SMOOTH + STEPS + texture * TEXTURE
    real, fake = analyse(img, TILES), analyse(img, FAKE)
    assert real.seam_ratio > 2.0
    assert fake.seam_ratio < 0.75 * real.seam_ratio
    worst = max(real.seams, key=lambda s: s.ratio)
    assert worst.kind == "boundary" and worst.drift_rel > 0.2


def test_a_single_step_edge_is_found_where_it_is():
    img = SMOOTH.copy()
    img[:, 192:] += 2.0  # one vertical seam at x = 192
    r = analyse(img, TILES)
    by_pos = {(s.orientation, s.position): s for s in r.seams}
    assert by_pos[("vertical", 192)].ratio > 3
    assert by_pos[("vertical", 106)].ratio < 1.5 and by_pos[("horizontal", 192)].ratio < 1.5
    hm = heatmap(img, TILES)
    assert hm.shape == (H, W) and hm[:, 190:194].mean() > 3 * hm[:, 104:108].mean()
    assert hm[10:80, 10:80].max() == 0, "no heat away from seam zones"


def test_spectral_peak_sees_a_periodic_grid():
    x = np.arange(1024)
    grid = np.floor(x / 128.0)[None, :] * 1.5 + np.floor(x / 128.0)[:, None] * 1.5  # steps every 128 px
    plan = TilePlan.create(1024, 1024, overlap=0, tile=128)
    tiles = [plan.image_rect(t) for t in plan.tiles]
    smooth = ndimage.gaussian_filter(np.random.default_rng(1).standard_normal((1024, 1024)), 12) * 50
    # With overlap 0 the ownership boundaries sit half a tile off the cut lines: the grid's
    # period is still 128 px, which is what the spectrum sees.
    assert analyse(smooth + np.roll(grid, 64, axis=(0, 1)), tiles).spectral_peak > 5
    assert analyse(smooth, tiles).spectral_peak < 4


def test_rgb_images_and_report_json():
    rgb = np.repeat((SMOOTH + STEPS)[..., None], 3, axis=2)
    d = analyse(rgb, TILES).to_dict()
    assert d["tiles"][0] == [0, 0, 128, 128] and d["seam_ratio"] > 2
    assert {"orientation", "kind", "position", "ratio", "drift", "drift_rel"} <= set(d["seams"][0])
