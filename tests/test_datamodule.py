"""The incomplete collection: initial fill, batches, shared state across workers, checkpoint state."""

import itertools
import logging

import numpy as np
import pytest
import torch

from miri_lightning.baselines import interpolation_fill
from miri_lightning.data import storage
from miri_lightning.data.datamodule import MaskedImageDataModule
from miri_lightning.data.masks import MCAR, MNAR, CenterBox, MaskMechanism, RandomBoxes
from miri_lightning.data.sources import ImageSet, ImageSource, NpzImages, Shapes
from miri_lightning.errors import ConfigError, DataError


def make_dm(**kwargs):
    args = dict(source=Shapes(num_images=24, image_size=16, seed=3), mask=MCAR(missing_rate=0.5, seed=1),
                batch_size=8)
    args.update(kwargs)
    dm = MaskedImageDataModule(**args)
    dm.setup("fit")
    return dm


@pytest.mark.parametrize("fill", ["noise", "mean"])
def test_initial_fill_keeps_observed_entries_and_fills_missing_ones(fill):
    dm = make_dm(fill=dict(kind=fill))
    observed = dm.masks
    assert torch.equal(dm.imputations[observed], dm.truth[observed])
    missing = dm.imputations[~observed]
    assert missing.min() >= 0 and missing.max() <= 1
    assert not torch.equal(missing, dm.truth[~observed])
    if fill == "mean":  # the same value in every image at a given entry
        per_entry = torch.where(observed, torch.nan, dm.imputations)
        spread = per_entry.nan_to_num(0).amax(0) - torch.where(observed, torch.inf, dm.imputations).amin(0)
        assert (spread[~observed.all(0)] <= 1e-6).all()


def test_fill_sigma_sets_the_interpolation_width():
    narrow, wide = make_dm(fill=dict(kind="interpolation", sigma=0.4)), make_dm(fill=dict(kind="interpolation"))
    observed = narrow.masks
    assert torch.equal(narrow.imputations[observed], narrow.truth[observed])
    assert torch.equal(narrow.imputations, interpolation_fill(narrow.truth, observed, sigma=0.4))
    assert torch.equal(wide.imputations, interpolation_fill(wide.truth, observed, sigma=1.0))
    assert not torch.equal(narrow.imputations, wide.imputations)
    wide.load_state_dict(narrow.state_dict())  # a resume with another width: round 0 was the checkpoint's
    assert wide.fill.sigma == 0.4 and wide.state_dict()["fill_sigma"] == 0.4
    with pytest.raises(ConfigError, match=r"data.fill.sigma must be > 0 \(pixels\), got 0"):
        make_dm(fill=dict(kind="interpolation", sigma=0))


def test_fill_noise_auto_is_the_fills_own_error_and_is_kept_for_new_images():
    dm = make_dm(fill=dict(kind="interpolation", noise="auto"))
    missing = ~dm.masks
    true_error = float((interpolation_fill(dm.truth, dm.masks) - dm.truth)[missing].square().mean().sqrt())
    assert isinstance(dm.fill.noise, float) and 0.7 * true_error < dm.fill.noise < 1.3 * true_error
    offsets = (dm.imputations - interpolation_fill(dm.truth, dm.masks))[missing]
    assert offsets.abs().max() > 0 and torch.equal(dm.imputations[dm.masks], dm.truth[dm.masks])
    resumed = make_dm(fill=dict(kind="interpolation"))
    resumed.load_state_dict(dm.state_dict())
    assert resumed.fill.noise == dm.fill.noise and resumed.state_dict()["fill_noise"] == dm.fill.noise
    with pytest.raises(ConfigError, match="data.fill.noise must be >= 0"):
        make_dm(fill=dict(kind="interpolation", noise=-0.1))
    half = make_dm(fill=dict(kind="interpolation", noise="auto", noise_scale=0.5))
    assert half.fill.noise == pytest.approx(0.5 * dm.fill.noise, rel=1e-6)
    offsets_half = (half.imputations - interpolation_fill(half.truth, half.masks))[missing]
    assert 0.3 < float(offsets_half.std() / offsets.std()) < 0.7


def test_same_seed_same_collection():
    a, b = make_dm(), make_dm()
    assert torch.equal(a.masks, b.masks) and torch.equal(a.imputations, b.imputations)
    assert not torch.equal(a.imputations, make_dm(seed=9).imputations)


def one_pass(loader):
    """The batches of one pass over the training images (the loader is endless: a round takes what it trains)."""
    return itertools.islice(loader, len(loader.sampler.pool) // loader.batch_size)


def test_batches_are_index_imputation_mask_and_cover_the_collection():
    dm = make_dm()
    seen = []
    for idx, x, m in one_pass(dm.train_dataloader()):
        assert torch.equal(x, dm.imputations[idx]) and torch.equal(m, dm.masks[idx])
        seen += idx.tolist()
    assert sorted(seen) == list(range(24))


def test_batch_order_depends_only_on_seed_and_epoch():
    loader = make_dm().train_dataloader()
    loader.sampler.set_epoch(3)
    first = torch.cat([idx for idx, _, _ in one_pass(loader)])
    loader.sampler.set_epoch(4)
    other = torch.cat([idx for idx, _, _ in one_pass(loader)])
    fresh = make_dm().train_dataloader()
    fresh.sampler.set_epoch(3)
    assert torch.equal(first, torch.cat([idx for idx, _, _ in one_pass(fresh)]))
    assert not torch.equal(first, other)


def test_workers_see_the_new_rounds_imputations():
    dm = make_dm(num_workers=1)
    loader = dm.train_dataloader()
    for _ in one_pass(loader):  # start the persistent worker on round 0's state
        pass
    new = advance(dm, 0.25)
    for idx, x, m in one_pass(loader):
        assert torch.equal(x, new[idx])


def advance(dm, value):
    """End a round whose solve set every missing entry to `value`; returns the new collection."""
    new = torch.where(dm.masks, dm.imputations, torch.full_like(dm.imputations, value))
    buffer = dm.new_round_buffer()
    buffer.copy_(new)
    dm.next_round(buffer)
    return new


def test_solves_that_change_observed_entries_or_give_nan_are_refused():
    dm = make_dm()
    rows = torch.tensor([0, 5])
    bad = dm.imputations[rows] + 0.01 * dm.masks[rows]
    with pytest.raises(DataError, match="observed"):
        dm.check_imputed(rows, bad)
    nan = torch.where(dm.masks[rows], dm.imputations[rows], torch.nan)
    with pytest.raises(DataError, match="NaN"):
        dm.check_imputed(rows, nan)
    dm.check_imputed(rows, torch.where(dm.masks[rows], dm.imputations[rows], 0.5))


def test_state_dict_round_trip_and_mismatched_masks():
    dm = make_dm()
    for value in (0.1, 0.2, 0.5):
        new = advance(dm, value)
    state = dm.state_dict()
    other = make_dm()
    other.load_state_dict(state)
    assert other.round == 3 and torch.equal(other.imputations, new)
    with pytest.raises(DataError, match="masks"):
        make_dm(mask=MCAR(missing_rate=0.5, seed=2)).load_state_dict(state)


def test_bad_settings_are_reported_early():
    with pytest.raises(ConfigError, match="batch_size"):
        MaskedImageDataModule(batch_size=1)
    with pytest.raises(ConfigError, match="batch_size"):
        make_dm(batch_size=64)


def test_warns_when_an_entry_is_missing_in_every_image():
    with pytest.warns(UserWarning, match="missing in every image"):
        make_dm(mask=CenterBox(size=0.25))


def test_memmap_state_lives_in_one_file_per_round_and_checkpoints_name_it(tmp_path):
    dm = make_dm(state="memmap", state_dir=str(tmp_path / "state"))
    assert dm.store is not None and (tmp_path / "state" / "node0" / "imputations_round000.npy").is_file()
    assert torch.equal(dm.imputations[dm.masks], dm.truth[dm.masks])
    new = advance(dm, 0.3)
    assert (tmp_path / "state" / "node0" / "imputations_round001.npy").is_file()
    assert torch.equal(dm.imputations, new)
    state = dm.state_dict()
    assert "imputations" not in state and state["imputations_file"] == "imputations_round001.npy"
    in_memory = make_dm()
    in_memory.load_state_dict(state)
    assert in_memory.round == 1 and torch.equal(in_memory.imputations, new)
    elsewhere = make_dm(state="memmap", state_dir=str(tmp_path / "other"))
    elsewhere.load_state_dict(state)  # copied into the resuming run's own folder
    assert torch.equal(elsewhere.imputations, new)
    assert (tmp_path / "other" / "node0" / "imputations_round001.npy").is_file()
    (tmp_path / "state" / "node0" / "imputations_round001.npy").unlink()
    with pytest.raises(DataError, match="imputations_round001.npy"):
        make_dm().load_state_dict(state)


def test_memmap_workers_see_the_new_rounds_file(tmp_path):
    dm = make_dm(state="memmap", state_dir=str(tmp_path), num_workers=1)
    loader = dm.train_dataloader()
    for _ in one_pass(loader):
        pass
    new = advance(dm, 0.75)
    for idx, x, m in one_pass(loader):
        assert torch.equal(x, new[idx])


def test_auto_state_maps_to_disk_only_when_memory_is_short(monkeypatch):
    from miri_lightning.data import storage

    assert storage.choose_mode("auto", 10**6, 2) == "memory"
    monkeypatch.setattr(storage, "physical_memory_bytes", lambda: 10**7)
    assert storage.choose_mode("auto", 10**6, 2) == "memmap"
    assert storage.choose_mode("memory", 10**6, 2) == "memory"


def test_a_state_that_cannot_fit_is_refused_before_any_work_naming_the_key(monkeypatch, tmp_path):
    # 24 images of 3x16x16 from Shapes (float32 truth): 18,432 entries of 4 + 4 + 1 + 4 bytes, 240 kB
    monkeypatch.setattr(storage, "available_memory_bytes", lambda: 200_000)
    with pytest.raises(ConfigError, match=r"data.state memory: .* in each of this node's 1 processes.*"
                                          r"set data.state to memmap"):
        make_dm(state="memory")
    monkeypatch.setattr(storage.shutil, "disk_usage", lambda path: type("Usage", (), {"free": 100_000})())
    with pytest.raises(ConfigError, match=r"data.state memmap: .* has 0.0 GB free; set data.state_dir"):
        make_dm(state="memmap", state_dir=str(tmp_path / "state"))
    assert not (tmp_path / "state" / "node0" / "masks.npy").exists()


def _npz_source(tmp_path, images, masks):
    np.savez(tmp_path / "d.npz", images=images, masks=masks)
    return NpzImages(tmp_path / "d.npz")


def test_images_without_an_observed_entry_are_refused(tmp_path):
    masks = np.ones((12, 8, 8), np.uint8)
    masks[[3, 7]] = 0
    source = _npz_source(tmp_path, np.zeros((12, 8, 8), np.uint8), masks)
    with pytest.raises(DataError, match=r"no observed entry in 2 of 12 images.*images 3, 7 \("):
        make_dm(source=source, mask=None)
    # The source's masks and data.mask together: a centre box over the whole image hides everything.
    with pytest.raises(DataError, match=r"no observed entry in 24 of 24 images.*images 0, 1, .*, 9 and 14 more"):
        make_dm(mask=CenterBox(size=1.0))


def test_images_without_a_missing_entry_pass_through_unchanged(tmp_path, caplog):
    rng = np.random.default_rng(0)
    images = rng.random((12, 8, 8)).astype(np.float32)
    masks = rng.random((12, 8, 8)) < 0.5
    masks[[0, 5]] = True
    caplog.set_level(logging.INFO)
    dm = make_dm(source=_npz_source(tmp_path, images, masks), mask=None, fill=dict(kind="interpolation"))
    assert "no missing entry in 2 of 12 images" in caplog.text
    expected = torch.from_numpy(images[[0, 5]])[:, None]
    assert torch.equal(dm.imputations[[0, 5]], expected)
    assert not torch.equal(dm.imputations[1], torch.from_numpy(images[1])[None])


def test_an_empty_source_is_named(tmp_path):
    class Empty(ImageSource):
        def load(self):
            return ImageSet(images=torch.zeros(0, 1, 8, 8))

    with pytest.raises(DataError, match=r"data.source Empty gave no images \(shape \(0, 1, 8, 8\)\)"):
        make_dm(source=Empty())


def test_memmap_state_on_a_full_disk_names_the_file_and_keeps_the_last_round(tmp_path, monkeypatch):
    import errno

    from miri_lightning.data.storage import MemmapStore
    from miri_lightning.errors import OutputError

    store = MemmapStore(tmp_path, writer=True, barrier=lambda: None)
    first = store.save("round000.npy", torch.ones(2, 1, 4, 4)).clone()

    def full_disk(fd, offset, length):
        raise OSError(errno.ENOSPC, "No space left on device")

    monkeypatch.setattr("os.posix_fallocate", full_disk)
    with pytest.raises(OutputError, match=r"imputation state .*\.pending\.npy: No space left on device"):
        store.save("round001.npy", torch.zeros(2, 1, 4, 4))
    assert torch.equal(store.open("round000.npy"), first)
    assert not (tmp_path / "round001.npy").exists()


class WholeCollection(MaskMechanism):
    """A mechanism of one's own, with no stream: the collection is masked at once."""

    def __call__(self, images):
        return MCAR(0.5, seed=4)(images)


@pytest.mark.parametrize("fill", [dict(fill=dict(kind="noise")), dict(fill=dict(kind="mean")),
                                  dict(fill=dict(kind="interpolation", keep=0.7, noise="auto")),
                                  dict(fill=dict(kind="interpolation"), mask=MNAR(0.3, strength=1.0, seed=1)),
                                  dict(fill=dict(kind="noise"), mask=WholeCollection()),  # masked at once
                                  dict(fill=dict(kind="mean"), mask=RandomBoxes(seed=1))])
def test_the_collection_built_in_chunks_is_the_one_built_at_once(fill, monkeypatch, tmp_path):
    def build(**kwargs):
        return make_dm(source=Shapes(num_images=600, image_size=8, seed=2), **fill, **kwargs)

    whole = build()
    monkeypatch.setattr(storage, "CHUNK_BYTES", 1)  # chunks of BLOCK images: 256, 256 and 88
    assert len(storage.chunk_rows(whole.masks.shape)) == 3
    for chunked in (build(), build(state="memmap", state_dir=str(tmp_path))):
        assert torch.equal(chunked.masks, whole.masks) and torch.equal(chunked.truth, whole.truth)
        assert torch.equal(chunked.imputations, whole.imputations)
        assert chunked.fill.noise == whole.fill.noise and chunked.masks_sha1 == whole.masks_sha1


def test_an_8_bit_source_keeps_8_bit_ground_truth(tmp_path):
    pixels = np.random.default_rng(0).integers(0, 256, (40, 8, 8, 3), dtype=np.uint8)
    np.savez(tmp_path / "d.npz", images=pixels)
    for state in ("memory", "memmap"):
        dm = make_dm(source=NpzImages(tmp_path / "d.npz"), state=state, state_dir=str(tmp_path / "state"))
        assert dm.truth_values.dtype == torch.uint8
        assert torch.equal(dm.truth_values, torch.from_numpy(pixels).permute(0, 3, 1, 2))
        assert torch.equal(dm.imputations[dm.masks], dm.truth[dm.masks])  # observed entries: k/255 exactly
        assert torch.equal(dm.true_images(5), dm.truth[:5])


def test_only_the_writer_passes_over_the_collection_and_the_others_read_its_result(monkeypatch, tmp_path):
    settings = dict(fill=dict(kind="interpolation", keep=0.7, noise="auto"), state="memmap",
                    state_dir=str(tmp_path))
    writer = make_dm(**settings)
    # Another process of the node: it maps the writer's files and must not read the collection's values again.
    monkeypatch.setattr(MaskedImageDataModule, "_make_store",
                        lambda self: storage.MemmapStore(tmp_path / "node0", writer=False, barrier=lambda: None))
    monkeypatch.setattr(ImageSet, "floats", lambda *args: pytest.fail("a reader passed over the images"))
    reader = make_dm(**settings)
    assert reader.fill.state() == writer.fill.state() and reader.fill.noise > 0
    assert reader.masks_sha1 == writer.masks_sha1
    assert torch.equal(reader.imputations, writer.imputations) and torch.equal(reader.masks, writer.masks)
