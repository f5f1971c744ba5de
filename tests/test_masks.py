"""Behaviour of the mask mechanisms (True = observed, False = missing)."""

import math

import pytest
import torch
import torch.nn.functional as F

from miri_lightning.data.masks import (
    MAR,
    MCAR,
    MNAR,
    AnyOf,
    CenterBox,
    MaskMechanism,
    RandomBoxes,
    Strokes,
)
from miri_lightning.errors import ConfigError, DataError


def smooth_images(n: int = 200, channels: int = 3, size: int = 32, seed: int = 0) -> torch.Tensor:
    """Upsampled coarse noise: brightness varies smoothly within and across images."""
    generator = torch.Generator().manual_seed(seed)
    coarse = torch.rand(n, channels, 4, 4, generator=generator)
    return F.interpolate(coarse, size=(size, size), mode="bilinear", align_corners=False).clamp(0, 1)


def missing_fraction(observed: torch.Tensor) -> float:
    return 1 - observed.float().mean().item()


ALL_MECHANISMS = {
    "mcar": lambda seed: MCAR(missing_rate=0.6, seed=seed),
    "mcar_per_channel": lambda seed: MCAR(missing_rate=0.6, per_channel=True, seed=seed),
    "center_box": lambda seed: CenterBox(size=0.5, seed=seed),
    "random_boxes": lambda seed: RandomBoxes(num_boxes=2, seed=seed),
    "strokes": lambda seed: Strokes(seed=seed),
    "mar": lambda seed: MAR(missing_rate=0.5, seed=seed),
    "mnar": lambda seed: MNAR(missing_rate=0.5, seed=seed),
    "any_of": lambda seed: AnyOf([MCAR(missing_rate=0.1, seed=seed), RandomBoxes(seed=seed + 1)]),
}
RANDOM_MECHANISMS = [name for name in ALL_MECHANISMS if name != "center_box"]


@pytest.fixture(scope="module")
def images() -> torch.Tensor:
    return smooth_images()


# ----------------------------------------------------------------------------- common contract


@pytest.mark.parametrize("name", list(ALL_MECHANISMS))
def test_output_is_bool_and_shaped_like_images(name, images):
    small = images[:10, :, :, :24]  # non-square on purpose
    observed = ALL_MECHANISMS[name](0)(small)
    assert isinstance(ALL_MECHANISMS[name](0), MaskMechanism)
    assert observed.dtype == torch.bool
    assert observed.shape == small.shape


@pytest.mark.parametrize("name", list(ALL_MECHANISMS))
def test_same_seed_gives_identical_masks(name, images):
    assert torch.equal(ALL_MECHANISMS[name](3)(images), ALL_MECHANISMS[name](3)(images))


@pytest.mark.parametrize("name", RANDOM_MECHANISMS)
def test_different_seeds_give_different_masks(name, images):
    assert not torch.equal(ALL_MECHANISMS[name](0)(images), ALL_MECHANISMS[name](1)(images))


def test_center_box_ignores_seed(images):
    assert torch.equal(CenterBox(seed=0)(images), CenterBox(seed=1)(images))


@pytest.mark.parametrize("name", list(ALL_MECHANISMS))
def test_global_rng_is_left_alone(name, images):
    state = torch.get_rng_state()
    ALL_MECHANISMS[name](0)(images[:10])
    assert torch.equal(state, torch.get_rng_state())


@pytest.mark.parametrize("name", ["mcar", "center_box", "random_boxes", "strokes", "mar", "mnar", "any_of"])
def test_shared_mechanisms_mask_all_channels_alike(name, images):
    observed = ALL_MECHANISMS[name](0)(images)
    assert torch.equal(observed, observed[:, :1].expand_as(observed))


def test_rejects_images_that_are_not_4d():
    with pytest.raises(DataError, match=r"\(N, C, H, W\)"):
        MCAR()(torch.rand(3, 32, 32))


@pytest.mark.parametrize("name", sorted(ALL_MECHANISMS))
@pytest.mark.parametrize("value", [float("nan"), float("inf"), -0.5, 2.0])
def test_rejects_values_outside_the_unit_range(name, value):
    images = torch.rand(2, 1, 8, 8)
    images[1, 0, 3, 4] = value
    with pytest.raises(DataError, match=r"\[0, 1\], got .* at index \(1, 0, 3, 4\)"):
        ALL_MECHANISMS[name](0)(images)


def test_rejects_complex_images():
    with pytest.raises(DataError, match="complex"):
        MNAR()(torch.rand(2, 1, 8, 8, dtype=torch.complex64))


# ----------------------------------------------------------------------------- rates


@pytest.mark.parametrize("rate", [0.1, 0.3, 0.6])
@pytest.mark.parametrize(
    "make",
    [
        lambda rate: MCAR(missing_rate=rate),
        lambda rate: MCAR(missing_rate=rate, per_channel=True),
        lambda rate: MAR(missing_rate=rate, observed_fraction=0.25),
        lambda rate: MNAR(missing_rate=rate),
        lambda rate: MNAR(missing_rate=rate, strength=-3.0),
    ],
    ids=["mcar", "mcar_per_channel", "mar", "mnar", "mnar_negative"],
)
def test_probabilistic_mechanisms_hit_the_missing_rate(make, rate, images):
    assert abs(missing_fraction(make(rate)(images)) - rate) < 0.02


@pytest.mark.parametrize("make", [MCAR, MAR, MNAR])
def test_zero_missing_rate_observes_everything(make, images):
    assert make(missing_rate=0.0)(images).all()


def test_mcar_per_channel_draws_channels_independently(images):
    rate = 0.4
    observed = MCAR(missing_rate=rate, per_channel=True)(images)
    for channel in range(observed.shape[1]):
        assert abs(missing_fraction(observed[:, channel]) - rate) < 0.02
    # Independent channels agree with probability rate^2 + (1 - rate)^2 = 0.52, shared ones always.
    agreement = (observed[:, 0] == observed[:, 1]).float().mean().item()
    assert abs(agreement - (rate**2 + (1 - rate) ** 2)) < 0.02


@pytest.mark.parametrize("size, side", [(0.5, 16), (0.3, 10), (1.0, 32)])
def test_center_box_is_centred_square_of_rounded_side(size, side, images):
    observed = CenterBox(size=size)(images)
    start = (32 - side) // 2
    expected = torch.ones(32, 32, dtype=torch.bool)
    expected[start : start + side, start : start + side] = False
    assert torch.equal(observed, expected.expand_as(observed))
    assert missing_fraction(observed) == pytest.approx(side * side / 32**2)


def _bounding_box(missing: torch.Tensor) -> tuple[int, int, int, int]:
    rows = missing.any(dim=1).nonzero().flatten()
    cols = missing.any(dim=0).nonzero().flatten()
    return int(rows[0]), int(rows[-1]) + 1, int(cols[0]), int(cols[-1]) + 1


def test_random_boxes_are_rectangles_of_the_configured_size(images):
    observed = RandomBoxes(num_boxes=1, min_size=0.25, max_size=0.5)(images)
    for missing in ~observed[:, 0]:
        top, bottom, left, right = _bounding_box(missing)
        assert missing[top:bottom, left:right].all()
        assert missing.sum() == (bottom - top) * (right - left)
        assert 8 <= bottom - top <= 16 and 8 <= right - left <= 16


def test_random_boxes_move_across_images(images):
    observed = RandomBoxes(num_boxes=1)(images)
    corners = {_bounding_box(missing)[::2] for missing in ~observed[:, 0]}
    assert len(corners) > 50


def test_random_boxes_fraction_grows_with_number_of_boxes(images):
    one = missing_fraction(RandomBoxes(num_boxes=1)(images))
    three = missing_fraction(RandomBoxes(num_boxes=3)(images))
    assert 0.25**2 <= one <= 0.5**2
    assert one < three <= 3 * 0.5**2


def test_strokes_are_present_in_every_image_but_do_not_cover_it(images):
    observed = Strokes(num_strokes=4, max_width=0.1, max_length=0.5)(images)
    per_image = 1 - observed[:, 0].float().mean(dim=(1, 2))
    assert (per_image > 0).all() and (per_image < 1).all()
    assert 0.02 < per_image.mean().item() < 0.4


def test_strokes_grow_with_width_and_length(images):
    thin = missing_fraction(Strokes(max_width=0.05, max_length=0.3)(images))
    thick = missing_fraction(Strokes(max_width=0.3, max_length=1.0)(images))
    assert thick > 2 * thin


def test_strokes_are_connected_blobs_not_scattered_pixels(images):
    # One stroke is a single thick polyline: its missing pixels have missing neighbours.
    missing = ~Strokes(num_strokes=1, max_width=0.2, max_length=0.5)(images)[:, 0]
    padded = F.pad(missing.float()[:, None], (1, 1, 1, 1))
    neighbours = F.conv2d(padded, torch.ones(1, 1, 3, 3))[:, 0] - missing.float()
    assert (neighbours[missing] >= 2).float().mean() > 0.95


# ----------------------------------------------------------------------------- MAR


@pytest.mark.parametrize("observed_fraction, band", [(0.25, 8), (0.5, 16), (0.1, 3)])
def test_mar_never_hides_the_observed_band(observed_fraction, band, images):
    observed = MAR(missing_rate=0.3, observed_fraction=observed_fraction)(images)
    assert observed[:, :, :band].all()
    assert not observed[:, :, band:].all()


def test_mar_mask_ignores_values_outside_the_observed_band(images):
    changed = images.clone()
    changed[:, :, 8:] = smooth_images(seed=99)[:, :, 8:]
    changed[:100, :, 8:] = 1 - changed[:100, :, 8:]
    mechanism = MAR(missing_rate=0.5, observed_fraction=0.25, seed=5)
    assert torch.equal(mechanism(images), mechanism(changed))


@pytest.mark.parametrize("strength", [5.0, -5.0])
def test_mar_missingness_follows_the_observed_band(strength, images):
    bright_band = images.clone()
    bright_band[:100, :, :8] = 0.7 + 0.3 * bright_band[:100, :, :8]
    bright_band[100:, :, :8] = 0.3 * bright_band[100:, :, :8]
    observed = MAR(missing_rate=0.4, observed_fraction=0.25, strength=strength)(bright_band)
    rate_under_bright = missing_fraction(observed[:100])
    rate_under_dark = missing_fraction(observed[100:])
    assert math.copysign(1, strength) * (rate_under_bright - rate_under_dark) > 0.3


def test_mar_rejects_too_short_images():
    with pytest.raises(DataError, match="MAR"):
        MAR(missing_rate=0.7, observed_fraction=0.25)(torch.rand(2, 1, 3, 8))


# ----------------------------------------------------------------------------- MNAR


def test_mnar_hides_bright_pixels_more_often(images):
    observed = MNAR(missing_rate=0.5, strength=5.0)(images)[:, 0]
    brightness = images.mean(dim=1)
    low, high = brightness.quantile(0.25), brightness.quantile(0.75)
    rate_bright = 1 - observed[brightness > high].float().mean().item()
    rate_dark = 1 - observed[brightness < low].float().mean().item()
    assert rate_bright - rate_dark > 0.5


def test_mnar_negative_strength_hides_dark_pixels_more_often(images):
    observed = MNAR(missing_rate=0.5, strength=-5.0)(images)[:, 0]
    brightness = images.mean(dim=1)
    median = brightness.median()
    assert (1 - observed[brightness < median].float().mean()) > (1 - observed[brightness > median].float().mean()) + 0.3


def test_mnar_pixel_probability_follows_its_own_value(images):
    mechanism = MNAR(missing_rate=0.5, strength=5.0)
    darkened, brightened = images.clone(), images.clone()
    darkened[:, :, 10:14, 10:14] = 0.0
    brightened[:, :, 10:14, 10:14] = 1.0
    p_dark = mechanism.missing_probability(darkened)[:, 0, 10:14, 10:14]
    p_bright = mechanism.missing_probability(brightened)[:, 0, 10:14, 10:14]
    assert (p_bright > p_dark).all()
    rate_dark = missing_fraction(mechanism(darkened)[:, :, 10:14, 10:14])
    rate_bright = missing_fraction(mechanism(brightened)[:, :, 10:14, 10:14])
    assert rate_bright - rate_dark > 0.5


# ----------------------------------------------------------------------------- AnyOf


def test_any_of_is_the_union_of_missing_entries(images):
    parts = [MCAR(missing_rate=0.2, seed=1), RandomBoxes(num_boxes=1, seed=2), MNAR(missing_rate=0.1, seed=3)]
    observed = AnyOf(parts)(images)
    masks = [part(images) for part in parts]
    assert torch.equal(observed, masks[0] & masks[1] & masks[2])
    assert all(missing_fraction(observed) >= missing_fraction(mask) for mask in masks)


# ----------------------------------------------------------------------------- configuration errors


@pytest.mark.parametrize(
    "make, parameter",
    [
        (lambda: MCAR(missing_rate=1.2), "missing_rate"),
        (lambda: MCAR(missing_rate=1.0), "missing_rate"),
        (lambda: MCAR(missing_rate=-0.1), "missing_rate"),
        (lambda: MCAR(seed="zero"), "seed"),
        (lambda: CenterBox(size=0.0), "size"),
        (lambda: CenterBox(size=1.5), "size"),
        (lambda: RandomBoxes(num_boxes=0), "num_boxes"),
        (lambda: RandomBoxes(num_boxes=1.5), "num_boxes"),
        (lambda: RandomBoxes(min_size=0.0), "min_size"),
        (lambda: RandomBoxes(max_size=1.2), "max_size"),
        (lambda: RandomBoxes(min_size=0.6, max_size=0.5), "min_size"),
        (lambda: Strokes(num_strokes=0), "num_strokes"),
        (lambda: Strokes(max_width=0.0), "max_width"),
        (lambda: Strokes(max_length=1.5), "max_length"),
        (lambda: MAR(observed_fraction=0.0), "observed_fraction"),
        (lambda: MAR(observed_fraction=1.0), "observed_fraction"),
        (lambda: MAR(missing_rate=0.8, observed_fraction=0.25), "missing_rate"),
        (lambda: MAR(missing_rate=0.75, observed_fraction=0.25), "missing_rate"),
        (lambda: MAR(strength=float("nan")), "strength"),
        (lambda: MNAR(missing_rate=1.0), "missing_rate"),
        (lambda: MNAR(strength=float("inf")), "strength"),
        (lambda: AnyOf([]), "mechanisms"),
        (lambda: AnyOf([MCAR(), "box"]), "mechanisms[1]"),
    ],
)
def test_bad_parameters_raise_config_error_naming_them(make, parameter):
    with pytest.raises(ConfigError) as raised:
        make()
    assert parameter in str(raised.value)
    assert isinstance(raised.value, ValueError)


# ----------------------------------------------------------------------------- configuration from YAML


def test_mechanisms_build_from_a_jsonargparse_config():
    jsonargparse = pytest.importorskip("jsonargparse")
    parser = jsonargparse.ArgumentParser()
    parser.add_argument("--mask", type=MaskMechanism)
    config = parser.parse_string(
        """
        mask:
          class_path: miri_lightning.data.masks.AnyOf
          init_args:
            mechanisms:
              - class_path: miri_lightning.data.masks.MCAR
                init_args: {missing_rate: 0.1, seed: 1}
              - class_path: miri_lightning.data.masks.CenterBox
                init_args: {size: 0.25}
        """
    )
    mask = parser.instantiate_classes(config).mask
    assert isinstance(mask, AnyOf)
    assert [type(part) for part in mask.mechanisms] == [MCAR, CenterBox]
    assert mask.mechanisms[0].missing_rate == 0.1


@pytest.mark.parametrize("mechanism", [MCAR(0.6, seed=3), MCAR(0.3, per_channel=True, seed=4), CenterBox(0.5),
                                       RandomBoxes(2, seed=5), Strokes(2, max_width=0.3, seed=6),
                                       MAR(0.3, strength=3.0, seed=7), MNAR(0.4, strength=-2.0, seed=8),
                                       AnyOf([MCAR(0.2, seed=1), CenterBox(0.3), RandomBoxes(seed=2), Strokes(1),
                                              MNAR(0.1, seed=3)])])
def test_a_stream_masks_chunk_by_chunk_what_one_call_masks(mechanism):
    images = torch.rand(70, 3, 9, 7)
    cuts = [images[a:b] for a, b in ((0, 1), (1, 33), (33, 64), (64, 70))]
    stream = mechanism.stream(len(images), lambda: iter(cuts))
    assert torch.equal(torch.cat([stream(chunk) for chunk in cuts]), mechanism(images))


def test_a_fitted_stream_reads_the_collection_before_its_first_chunk_and_reaches_its_rate():
    images = torch.rand(300, 1, 16, 16)
    passes = []

    def chunks():
        passes.append(0)
        return (images[a : a + 100] for a in range(0, 300, 100))

    stream = MNAR(0.35, strength=4.0, seed=1).stream(len(images), chunks)
    assert len(passes) == 2  # the statistic's moments, then the histogram of the scores
    masks = torch.cat([stream(chunk) for chunk in chunks()])
    assert abs(missing_fraction(masks) - 0.35) < 0.01


def test_a_mechanism_of_ones_own_is_masked_at_once():
    class Half(MaskMechanism):
        def __call__(self, images):
            return torch.arange(images[0].numel()).reshape(images.shape[1:]).expand_as(images) % 2 == 0

    assert Half().stream(10, lambda: []) is None
    assert AnyOf([MCAR(0.2), Half()]).stream(10, lambda: []) is None
