"""Preprocessing, checked on synthetic images whose expected output is worked out from the transform's definition."""

import io

import numpy as np
import pytest
from PIL import Image

from common.images import MEAN, STD, load_image, sample_images


def normalised(rgb):
    return (np.asarray(rgb, np.float32) / 255.0 - MEAN) / STD


def save(tmp_path, im, name, **kw):
    path = tmp_path / name
    im.save(path, **kw)
    return path


def test_uniform_colour_gives_its_normalised_value_everywhere(tmp_path):
    path = save(tmp_path, Image.new("RGB", (320, 240), (200, 100, 50)), "flat.png")
    x = load_image(path)
    assert x.shape == (3, 224, 224) and x.dtype == np.float32 and x.flags.c_contiguous
    np.testing.assert_allclose(x, np.broadcast_to(normalised((200, 100, 50))[:, None, None], x.shape), atol=1e-6)


def test_shorter_side_to_256_then_centre_crop(tmp_path):
    # 1000x500, left half red, right half blue: resized to 512x256, the crop spans columns 144..367,
    # so the red/blue edge (column 256) lands at crop column 112.
    a = np.zeros((500, 1000, 3), np.uint8)
    a[:, :500] = (255, 0, 0)
    a[:, 500:] = (0, 0, 255)
    x = load_image(save(tmp_path, Image.fromarray(a), "halves.png"))
    red, blue = normalised((255, 0, 0)), normalised((0, 0, 255))
    np.testing.assert_allclose(x[:, :, :110], np.broadcast_to(red[:, None, None], (3, 224, 110)), atol=1e-5)
    np.testing.assert_allclose(x[:, :, 114:], np.broadcast_to(blue[:, None, None], (3, 224, 110)), atol=1e-5)


def test_crop_offset_on_an_image_already_256_high(tmp_path):
    # 300x256: no resize of the height, width stays 300; the crop starts at column round(76 / 2) = 38.
    a = np.zeros((256, 300, 3), np.uint8)
    a[:, :, 0] = (np.arange(300) % 256).astype(np.uint8)[None, :]
    x = load_image(save(tmp_path, Image.fromarray(a), "ramp.png"))
    want = ((np.arange(38, 262) % 256) / 255.0 - MEAN[0]) / STD[0]
    np.testing.assert_allclose(x[0, 100], want, atol=2e-5)


def test_grayscale_becomes_three_equal_channels(tmp_path):
    x = load_image(save(tmp_path, Image.new("L", (256, 256), 128), "g.png"))
    for c in range(3):
        np.testing.assert_allclose(x[c], (128 / 255 - MEAN[c]) / STD[c], atol=1e-6)


def test_sixteen_bit_grayscale_is_scaled_not_clipped(tmp_path):
    a = np.full((256, 256), 32768, np.uint16)  # mid-grey in 16 bits; clipping would make it white
    path = save(tmp_path, Image.fromarray(a), "g16.png")
    assert Image.open(path).mode.startswith("I")
    x = load_image(path)
    np.testing.assert_allclose(x[0], (128 / 255 - MEAN[0]) / STD[0], atol=1e-5)


def test_transparency_is_composited_on_white(tmp_path):
    im = Image.new("RGBA", (256, 256), (0, 0, 0, 0))  # fully transparent black
    x = load_image(save(tmp_path, im, "clear.png"))
    np.testing.assert_allclose(x[:, 0, 0], normalised((255, 255, 255)), atol=1e-6)
    p = Image.new("P", (256, 256), 0)
    p.putpalette([0, 0, 0, 10, 200, 30] + [0] * 762)
    p.paste(1, (0, 0, 256, 128))
    x = load_image(save(tmp_path, p, "pal.png", transparency=0))
    np.testing.assert_allclose(x[:, 10, 112], normalised((10, 200, 30)), atol=1e-5)
    np.testing.assert_allclose(x[:, 200, 112], normalised((255, 255, 255)), atol=1e-5)


def test_exif_orientation_is_applied(tmp_path):
    # Stored 300x200 landscape with a red top band; EXIF 6 means "rotate 90 degrees clockwise to view",
    # which puts the stored top band on the right of a 200x300 portrait.
    a = np.full((200, 300, 3), 255, np.uint8)
    a[:20] = (255, 0, 0)
    exif = Image.Exif()
    exif[0x0112] = 6
    path = save(tmp_path, Image.fromarray(a), "rot.jpg", exif=exif.tobytes(), quality=95)
    x = load_image(path)
    white, red = normalised((255, 255, 255)), normalised((255, 0, 0))
    assert np.abs(x[:, 112, 0] - white).max() < 0.1  # left edge of the portrait: white
    assert np.abs(x[:, 112, 223] - red).max() < 0.2  # right edge: the red band


def test_animated_gif_uses_the_first_frame(tmp_path):
    frames = [Image.new("RGB", (256, 256), c) for c in [(0, 255, 0), (255, 0, 0)]]
    buf = io.BytesIO()
    frames[0].save(buf, "GIF", save_all=True, append_images=frames[1:])
    path = tmp_path / "anim.gif"
    path.write_bytes(buf.getvalue())
    x = load_image(path)
    np.testing.assert_allclose(x[:, 5, 5], normalised((0, 255, 0)), atol=1e-5)


def test_every_sample_image_loads():
    paths = sample_images()
    assert len(paths) >= 6
    modes = {Image.open(p).mode for p in paths}
    assert "L" in modes and ("RGBA" in modes or "P" in modes), modes
    for p in paths:
        x = load_image(p)
        assert np.isfinite(x).all() and -3 < x.min() < x.max() < 3


@pytest.mark.parametrize("size", [(1, 1), (1, 500), (500, 1)])
def test_tiny_and_thin_images(tmp_path, size):
    x = load_image(save(tmp_path, Image.new("RGB", size, (9, 9, 9)), "tiny.png"))
    assert x.shape == (3, 224, 224)
