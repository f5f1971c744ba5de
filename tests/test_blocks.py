"""Sums over a collection (blocks.py): the same bits however the collection is read in chunks of whole blocks."""

import math

import torch

from miri_lightning.blocks import BLOCK, BlockSum, ObservedMean, observed_mean
from miri_lightning.fills import RoundZeroFill


def collection(n: int = 2 * BLOCK + 40, seed: int = 0):
    g = torch.Generator().manual_seed(seed)
    images = torch.rand(n, 3, 6, 6, generator=g)
    return images, torch.rand(n, 3, 6, 6, generator=g) < 0.4


def in_chunks(accumulator, images, masks, rows):
    for start in range(0, len(images), rows):
        accumulator.add(images[start:start + rows], masks[start:start + rows])
    return accumulator.result()


def test_observed_mean_in_chunks_of_whole_blocks_is_one_call_bit_for_bit():
    images, masks = collection()
    whole = observed_mean(images, masks)
    assert torch.equal(in_chunks(ObservedMean(), images, masks, BLOCK), whole)
    assert torch.equal(in_chunks(ObservedMean(), images, masks, 2 * BLOCK), whole)
    expected = (images * masks).sum(0) / masks.sum(0)
    assert torch.allclose(whole, expected, atol=1e-6)


def test_observed_mean_of_never_observed_entries_is_the_global_mean():
    images, masks = collection(10)
    masks[:, 0, 0, 0] = False
    mean = observed_mean(images, masks)
    assert math.isclose(float(mean[0, 0, 0]), float(images[masks].double().mean()), rel_tol=1e-6)
    assert torch.equal(observed_mean(images, torch.zeros_like(masks)), torch.full((3, 6, 6), 0.5))


def test_fill_error_draws_its_hidden_entries_in_order_so_chunks_agree():
    images, masks = collection()
    fill = RoundZeroFill("interpolation", 1.0, 0.0, 1.0, None)
    whole = fill.error_stream(seed=3, fallback=None)
    whole.add(images, masks)
    chunked = in_chunks(fill.error_stream(seed=3, fallback=None), images, masks, BLOCK)
    assert chunked == whole.result() and 0 < chunked < 1
    assert fill.error_stream(seed=4, fallback=None).result() == 0.0  # nothing added yet


def test_block_sum_adds_a_tuple_of_sums():
    sums = BlockSum(lambda x, m: (x.sum(), m.sum()))
    images, masks = collection(BLOCK + 5)
    sums.add(images, masks)
    assert torch.isclose(sums.totals[0], images.sum()) and int(sums.totals[1]) == int(masks.sum())
