"""The training data pipeline: quality, crops and flips, reproducibility, bad files."""

import io
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image, JpegImagePlugin
from torch.utils.data import DataLoader

from d2lnet.data import Degradations, JPEGTrainSet, QualitySampler, StepSampler, split_holdout
from d2lnet.images import find_images_in
from d2lnet.jpeg import (
    compress,
    decompress,
    estimate_quality,
    estimate_quality_from_pixels,
    ijg_table,
    quantization_tables,
)
from d2lnet.metrics import rgb_to_y


def _write_images(folder: Path, count: int = 3, size: tuple[int, int] = (48, 40)) -> list[np.ndarray]:
    folder.mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(11)
    images = []
    for i in range(count):
        y, x = np.mgrid[0 : size[0], 0 : size[1]]
        image = np.stack([(x * (i + 3)) % 256, (y * 7) % 256, rng.integers(0, 256, size)], axis=-1).astype(np.uint8)
        Image.fromarray(image).save(folder / f"img{i}.png")
        images.append(image)
    return images


def test_samples_really_carry_their_quality(tmp_path):
    _write_images(tmp_path)
    data = JPEGTrainSet([tmp_path], crop=16, quality=QualitySampler(low=5, high=95), seed=1)
    seen = set()
    for index in range(30):
        clean, degraded, qf = data.sample(index)
        encoded = compress(clean, qf)  # what the sample's JPEG is: the clean crop at its QF
        assert estimate_quality(encoded) == qf  # read back from the bytes' quantization tables
        np.testing.assert_array_equal(decompress(encoded), degraded)
        assert 5 <= qf <= 95 and clean.shape == degraded.shape == (16, 16, 3)
        seen.add(qf)
    assert len(seen) > 10
    item = data[0]
    assert item["lq"].shape == item["gt"].shape == (3, 16, 16) and item["qf"] == data.sample(0)[2]


def test_quality_choices_and_mixture():
    rng = np.random.default_rng(0)
    choices = QualitySampler(choices=(10, 20, 30))
    assert {choices(rng) for _ in range(200)} == {10, 20, 30}
    mixed = QualitySampler(choices=(10,), low=50, high=60, choice_prob=0.5)
    draws = [mixed(rng) for _ in range(400)]
    assert set(draws) <= {10, *range(50, 61)}
    assert 0.4 < draws.count(10) / len(draws) < 0.6
    with pytest.raises(ValueError):
        QualitySampler(choices=(0,))
    with pytest.raises(ValueError):
        QualitySampler(low=60, high=50)


def test_crops_are_the_8_flips_and_rotations_of_the_source(tmp_path):
    """With the crop as large as the image, each clean sample is one of its 8 dihedral transforms."""
    (image,) = _write_images(tmp_path, count=1, size=(16, 16))
    transforms = [np.rot90(image, k) for k in range(4)] + [np.rot90(image, k)[:, ::-1] for k in range(4)]
    data = JPEGTrainSet([tmp_path], crop=16, quality=QualitySampler(choices=(50,)))
    found = set()
    for index in range(64):
        clean = data.sample(index)[0]
        matches = [i for i, t in enumerate(transforms) if np.array_equal(clean, t)]
        assert len(matches) == 1
        found.add(matches[0])
    assert found == set(range(8))


def test_crops_without_augmentation_are_pieces_of_the_image(tmp_path):
    (image,) = _write_images(tmp_path, count=1, size=(40, 48))
    data = JPEGTrainSet([tmp_path], crop=24, quality=QualitySampler(choices=(50,)), augment=False)
    for index in range(5):
        clean = data.sample(index)[0]
        hits = [(t, c) for t in range(17) for c in range(25) if np.array_equal(image[t : t + 24, c : c + 24], clean)]
        assert hits


def test_gray_mode_is_the_protocol_y_channel(tmp_path):
    (image,) = _write_images(tmp_path, count=1, size=(16, 16))
    data = JPEGTrainSet([tmp_path], crop=16, quality=QualitySampler(choices=(50,)), gray=True, augment=False)
    clean, degraded, _ = data.sample(0)
    np.testing.assert_array_equal(clean, rgb_to_y(image))
    assert degraded.ndim == 2 and data[0]["lq"].shape == (1, 16, 16)


def test_samples_are_reproducible_across_workers(tmp_path):
    _write_images(tmp_path)
    data = JPEGTrainSet([tmp_path], crop=16, quality=QualitySampler(low=5, high=95), rescale=(0.5, 1.0), seed=3)
    again = JPEGTrainSet([tmp_path], crop=16, quality=QualitySampler(low=5, high=95), rescale=(0.5, 1.0), seed=3)
    other = JPEGTrainSet([tmp_path], crop=16, quality=QualitySampler(low=5, high=95), rescale=(0.5, 1.0), seed=4)
    assert all(np.array_equal(data.sample(i)[1], again.sample(i)[1]) for i in range(6))
    assert not all(np.array_equal(data.sample(i)[1], other.sample(i)[1]) for i in range(6))
    batches = {}
    for workers in (0, 2):
        loader = DataLoader(data, batch_size=4, sampler=StepSampler(4, 0, 3), num_workers=workers)
        batches[workers] = torch.cat([b["lq"] for b in loader])
    torch.testing.assert_close(batches[0], batches[2], rtol=0, atol=0)


def test_step_sampler_splits_ranks_and_resumes():
    whole = list(StepSampler(batch_size=2, start_step=0, steps=4))
    assert whole == list(range(8))
    assert list(StepSampler(batch_size=2, start_step=2, steps=4)) == whole[4:]
    rank0 = list(StepSampler(2, 0, 3, rank=0, world_size=2))
    rank1 = list(StepSampler(2, 0, 3, rank=1, world_size=2))
    assert rank0 == [0, 1, 4, 5, 8, 9] and rank1 == [2, 3, 6, 7, 10, 11]


def test_unreadable_images_are_reported_by_name_and_skipped(tmp_path, capsys):
    _write_images(tmp_path, count=1)
    (tmp_path / "empty.png").write_bytes(b"")
    (tmp_path / "text.jpg").write_text("this is not an image")
    good = (tmp_path / "img0.png").read_bytes()
    Image.fromarray(np.zeros((64, 64, 3), np.uint8)).save(tmp_path / "full.jpg", quality=90)
    (tmp_path / "truncated.jpg").write_bytes((tmp_path / "full.jpg").read_bytes()[:300])
    (tmp_path / "full.jpg").unlink()
    assert good
    data = JPEGTrainSet([tmp_path], crop=16, quality=QualitySampler(choices=(30,)))
    errors = capsys.readouterr().err
    for name in ("empty.png", "text.jpg", "truncated.jpg"):
        assert name in errors
    assert [p.name for p in data.files] == ["img0.png"]


def test_images_smaller_than_the_crop_are_skipped_in_one_warning(tmp_path, capsys):
    _write_images(tmp_path / "small", count=4, size=(24, 40))
    _write_images(tmp_path / "large", count=1, size=(48, 40))
    data = JPEGTrainSet([tmp_path], crop=32, quality=QualitySampler(choices=(30,)))
    warnings = [line for line in capsys.readouterr().err.splitlines() if "smaller than" in line]
    assert len(warnings) == 1 and "skipping 4 training images smaller than the 32px crop" in warnings[0]
    assert [p.parent.name for p in data.files] == ["large"]


def test_holdout_is_left_out_of_training_and_stable_when_folders_grow(tmp_path):
    _write_images(tmp_path / "a", count=3)
    names = [tmp_path / "a" / f"n{i}.png" for i in range(400)]
    train, held = split_holdout(names, 0.25)
    assert 60 < len(held) < 140 and not set(train) & set(held) and len(train) + len(held) == 400
    more = names + [tmp_path / "b" / f"m{i}.png" for i in range(400)]
    train2, held2 = split_holdout(more, 0.25)
    assert set(held) <= set(held2) and set(train) <= set(train2)  # adding images moves none
    data = JPEGTrainSet([tmp_path / "a"], crop=16, quality=QualitySampler(choices=(50,)), holdout=0.5)
    assert sorted(data.files) == sorted(split_holdout(find_images_in([tmp_path / "a"]), 0.5)[0])


def test_mixed_crop_sizes_are_drawn_per_batch(tmp_path):
    _write_images(tmp_path, size=(64, 72))
    data = JPEGTrainSet([tmp_path], crop=[16, 32, 48], quality=QualitySampler(choices=(50,)), batch_size=4)
    loader = DataLoader(data, batch_size=4, sampler=StepSampler(4, steps=12))
    sizes = [batch["gt"].shape[-1] for batch in loader]  # stacking fails if a batch mixes sizes
    assert set(sizes) == {16, 32, 48}
    with pytest.raises(ValueError):
        JPEGTrainSet([tmp_path], crop=[16, 20], quality=QualitySampler(choices=(50,)))


def test_training_images_that_are_decoded_jpegs_are_kept_downscaled_or_dropped(tmp_path, capsys):
    _write_images(tmp_path, count=1, size=(64, 64))  # img0.png: never compressed
    rng = np.random.default_rng(5)
    y, x = np.mgrid[0:96, 0:128]
    textured = np.clip(np.stack([120 + 60 * np.sin(x / 9 + y / 13)] * 3, axis=-1) + rng.normal(0, 12, (96, 128, 3)), 8, 247)
    decoded = decompress(compress(textured.astype(np.uint8), 80))
    Image.fromarray(decoded).save(tmp_path / "was_a_jpeg.png")
    sampler = QualitySampler(choices=(50,))

    kept = JPEGTrainSet([tmp_path], crop=32, quality=sampler, jpeg_sources="keep")
    assert [p.name for p in kept.files] == ["img0.png", "was_a_jpeg.png"] and kept.images[1].shape == (96, 128, 3)
    dropped = JPEGTrainSet([tmp_path], crop=32, quality=sampler, jpeg_sources="drop")
    assert [p.name for p in dropped.files] == ["img0.png"]
    assert "1 of 2 training images are decoded JPEGs: left out" in capsys.readouterr().err
    for cache in (True, False):
        halved = JPEGTrainSet([tmp_path], crop=32, quality=sampler, jpeg_sources="downscale", augment=False, cache=cache)
        assert [p.name for p in halved.files] == ["img0.png", "was_a_jpeg.png"]
        expected = np.asarray(Image.fromarray(decoded).resize((64, 48), Image.Resampling.BICUBIC))
        np.testing.assert_array_equal(halved._image(1), expected)
    with pytest.raises(ValueError, match="jpeg_sources"):
        JPEGTrainSet([tmp_path], crop=32, quality=sampler, jpeg_sources="shrink")


def _textured(h: int, w: int, seed: int, channels: int = 3) -> np.ndarray:
    rng = np.random.default_rng(seed)
    y, x = np.mgrid[0:h, 0:w]
    base = np.stack([120 + 60 * np.sin(x / (7 + c) + y / 11) for c in range(channels)], axis=-1)
    return np.clip(base + rng.normal(0, 12, base.shape), 8, 247).astype(np.uint8).squeeze()


def test_degradations_subsampling_and_tables_are_in_the_files():
    patch = _textured(64, 64, 0)
    samplings = set()
    for seed in range(12):
        with Image.open(io.BytesIO(Degradations(subsampling=1).encode(patch, 50, np.random.default_rng(seed)))) as im:
            samplings.add(JpegImagePlugin.get_sampling(im))
    assert samplings == {0, 1}  # 4:4:4 and 4:2:2, never the protocol's 4:2:0
    for seed in range(5):
        data = Degradations(tables=1, table_jitter=(0.75, 1.33)).encode(patch, 50, np.random.default_rng(seed))
        tables = quantization_tables(data)
        for table, chroma in ((tables[0], False), (tables[1], True)):
            standard = ijg_table(50, chroma)
            assert not np.array_equal(table, standard)
            assert (table >= np.floor(standard * 0.75)).all() and (table <= np.ceil(standard * 1.33)).all()


def test_double_compression_is_first_on_a_shifted_grid():
    """First at quality 5 on a shifted grid, then at 100: the pixels show quality 5 on the grid of
    some offset (dy, dx) != (0, 0), found by estimating the quality at each of the 64 offsets."""
    patch = _textured(96, 96, 1, channels=1)
    degradations = Degradations(double=1, first_quality=(5, 5))
    for seed in range(3):
        decoded = decompress(degradations.encode(patch, 100, np.random.default_rng(seed)))
        found = {(dy, dx): estimate_quality_from_pixels(decoded[dy:, dx:]) for dy in range(8) for dx in range(8)}
        shifted = [offset for offset, quality in found.items() if quality == 5]
        assert len(shifted) == 1 and shifted[0] != (0, 0), found


def test_samples_with_degradations_are_told_the_quality_of_their_file(tmp_path):
    _write_images(tmp_path, count=2, size=(64, 64))
    plain = JPEGTrainSet([tmp_path], crop=32, quality=QualitySampler(low=20, high=90), seed=4)
    varied = JPEGTrainSet(
        [tmp_path], crop=32, quality=QualitySampler(low=20, high=90), seed=4, degradations=Degradations(double=1)
    )
    for index in range(4):
        (clean, single, qf), (clean2, double, told) = plain.sample(index), varied.sample(index)
        np.testing.assert_array_equal(clean, clean2)  # the same crop and quality draw
        assert told == qf and not np.array_equal(single, double)  # IJG tables: read back exactly
    with_tables = JPEGTrainSet([tmp_path], crop=32, quality=QualitySampler(choices=(50,)), degradations=Degradations(tables=1))
    told = {with_tables.sample(index)[2] for index in range(8)}
    assert told and all(35 <= q <= 65 for q in told)  # the nearest IJG quality of jittered tables
    with pytest.raises(ValueError, match="share"):
        Degradations(double=1.5)
