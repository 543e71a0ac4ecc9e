"""FWD: agreement with the authors' pytorchfwd and with PyWavelets, metric invariants, stats files, folders."""

from __future__ import annotations

import itertools
import warnings

import numpy as np
import pytest
import torch
from PIL import Image, ImageFilter

pytest.importorskip("ptwt")
from ditkit.evaluation.fwd import (FWDStats, FWDWarning, frechet_distance, fwd, fwd_from_statistics, fwd_statistics,  # noqa: E402
                        load_image_folder, packet_dim, wavelet_packet_features)


@pytest.fixture(scope="module")
def digits():
    """Real scans: scikit-learn's digits, uint8 (N, 32, 32, 3); test split 450, train split 1347."""
    from ditkit.data.digits import load_split

    return load_split("test").images, load_split("train").images


def shapes_uint8(seed: int, n: int, size: int = 32) -> np.ndarray:
    """Rendered shapes scenes (sharp edges) as uint8 (N, S, S, 3)."""
    from ditkit.data.shapes import make_batch

    x, _ = make_batch(seed, 0, n, size)
    return ((x + 1) * 127.5).round().clamp(0, 255).to(torch.uint8).permute(0, 2, 3, 1).numpy()


def random_uint8(n: int, size: int = 32, seed: int = 0) -> np.ndarray:
    return np.random.default_rng(seed).integers(0, 256, size=(n, size, size, 3), dtype=np.uint8)


# --------------------------------------------------------------------------
# Packets and statistics against the peer implementation
# --------------------------------------------------------------------------


@pytest.mark.parametrize("wavelet,level,log_scale", [("haar", 3, False), ("haar", 3, True), ("db2", 3, False)])
def test_packets_and_distance_match_pytorchfwd(wavelet, level, log_scale):
    freq_math = pytest.importorskip("pytorchfwd.freq_math")
    # 120 images: more than D (48 to 108 here), so the covariances are full rank, as in real use.
    a, b = random_uint8(120, seed=1), shapes_uint8(0, 120)
    ours = wavelet_packet_features(a, level=level, wavelet=wavelet, log_scale=log_scale)

    # pytorchfwd's path: ToTensor (x / 255 in float64, its default dtype) -> packets ->
    # compute_packet_statistics' permute + reshape to (P, N, C*h*w).
    def peer_features(u8):
        x = torch.from_numpy(u8).permute(0, 3, 1, 2).to(torch.float64) / 255
        p = freq_math.forward_wavelet_packet_transform(x, wavelet, level, log_scale)
        P, N = p.shape[1], p.shape[0]
        return p.permute(1, 0, 2, 3, 4).reshape(P, N, -1)

    ref = peer_features(a)
    assert ours.shape == (120, 4 ** level, packet_dim(32, 32, level, wavelet))
    torch.testing.assert_close(ours.transpose(0, 1), ref, rtol=1e-12, atol=1e-12)

    # Statistics (batched accumulation vs torch.mean / torch.cov) and the averaged distance.
    sa = fwd_statistics(a, level=level, wavelet=wavelet, log_scale=log_scale, batch_size=32)
    sb = fwd_statistics(b, level=level, wavelet=wavelet, log_scale=log_scale, batch_size=32)
    ref_b = peer_features(b)
    np.testing.assert_allclose(sa.mu, ref.mean(1).numpy(), rtol=1e-10, atol=1e-10)
    np.testing.assert_allclose(sa.sigma, torch.stack([torch.cov(p.T) for p in ref]).numpy(), rtol=1e-8, atol=1e-10)
    mu_b, sig_b = ref_b.mean(1).numpy(), torch.stack([torch.cov(p.T) for p in ref_b]).numpy()
    expected = np.mean([freq_math.calculate_frechet_distance(sa.mu[p], sa.sigma[p], mu_b[p], sig_b[p])
                        for p in range(len(sa.mu))])
    assert fwd_from_statistics(sa, sb) == pytest.approx(expected, rel=1e-6)


@pytest.mark.parametrize("wavelet", ["haar", "db2"])
def test_packets_match_pywavelets(wavelet):
    """An independent reference for ptwt: PyWavelets' NumPy packet tree ("reflect" boundary), per channel."""
    import pywt

    a = random_uint8(2, seed=2)
    ours = wavelet_packet_features(a, level=2, wavelet=wavelet).numpy()
    nodes = ["".join(p) for p in itertools.product("ahvd", repeat=2)]  # natural order
    for c in range(3):
        wp = pywt.WaveletPacket2D(a[1, :, :, c] / 255.0, wavelet, mode="reflect", maxlevel=2)
        ref = np.stack([wp[node].data for node in nodes])  # (P, h, w)
        got = ours[1].reshape(16, 3, *ref.shape[1:])[:, c]
        np.testing.assert_allclose(got, ref, atol=1e-12)


def test_haar_packets_keep_energy_and_inputs_agree():
    """Haar is orthonormal, so the packets hold the image's energy (Parseval); uint8 NHWC and
    float NCHW in [0, 1] give the same features."""
    a = random_uint8(3, seed=3)
    f = wavelet_packet_features(a, level=3)
    x = torch.from_numpy(a).permute(0, 3, 1, 2).float() / 255
    torch.testing.assert_close((f ** 2).sum(dim=(1, 2)), (x.double() ** 2).sum(dim=(1, 2, 3)))
    torch.testing.assert_close(wavelet_packet_features(x, level=3), f, rtol=1e-6, atol=1e-6)
    torch.testing.assert_close(wavelet_packet_features(torch.from_numpy(a), level=3), f)


def test_batching_and_streams_give_the_same_statistics(digits):
    te = digits[0][:100]
    whole = fwd_statistics(te, batch_size=100)
    for stats in (fwd_statistics(te, batch_size=7), fwd_statistics(iter([te[:30], te[30:31], te[31:]]))):
        assert stats.n == 100
        np.testing.assert_allclose(stats.mu, whole.mu, rtol=1e-12, atol=1e-12)
        np.testing.assert_allclose(stats.sigma, whole.sigma, rtol=1e-9, atol=1e-12)


# --------------------------------------------------------------------------
# Metric behaviour on real images
# --------------------------------------------------------------------------


def test_self_distance_is_zero_and_distance_is_symmetric(digits):
    te, tr = digits
    a, b = fwd_statistics(te), fwd_statistics(tr[:500])
    assert abs(fwd_from_statistics(a, a)) < 1e-6
    d_ab = fwd(te, tr[:500])
    assert d_ab > 1e-4
    assert fwd(tr[:500], te) == pytest.approx(d_ab, rel=1e-6)
    assert fwd_from_statistics(b, a) == pytest.approx(d_ab, rel=1e-6)


def test_grows_with_noise(digits):
    te, tr = digits
    ref = fwd_statistics(tr)
    x = torch.from_numpy(np.array(te)).permute(0, 3, 1, 2).double() / 255
    noise = torch.randn(x.shape, generator=torch.Generator().manual_seed(0), dtype=torch.float64)
    d = [fwd_from_statistics(ref, fwd_statistics((x + s * noise).clamp(0, 1))) for s in (0.0, 0.05, 0.1, 0.2)]
    assert all(lo < hi for lo, hi in zip(d, d[1:])), d


def test_grows_with_blur():
    ref = fwd_statistics(shapes_uint8(1, 96))  # a second sample of the same world, default level 4
    sharp = shapes_uint8(2, 96)

    def blur(r):
        return np.stack([np.asarray(Image.fromarray(im).filter(ImageFilter.GaussianBlur(r))) for im in sharp])

    d = [fwd_from_statistics(ref, fwd_statistics(blur(r) if r else sharp)) for r in (0, 1, 2, 4)]
    assert all(lo < hi for lo, hi in zip(d, d[1:])), d


# --------------------------------------------------------------------------
# Checks and warnings
# --------------------------------------------------------------------------


def test_input_errors_and_small_set_warning():
    a = random_uint8(4)
    with pytest.raises(ValueError, match="at least 2 images"):
        fwd_statistics(a[:1])
    with pytest.raises(ValueError, match="multiples of 2\\*\\*level = 16"):
        fwd_statistics(random_uint8(4, size=24), level=4)
    with pytest.raises(ValueError, match=r"\[0, 1\]"):
        fwd_statistics(torch.rand(4, 3, 32, 32) * 2 - 1)
    with pytest.raises(ValueError, match=r"\(N, H, W, 3\)"):
        fwd_statistics(np.zeros((4, 3, 32, 32), np.uint8))
    with pytest.raises(ValueError, match="level must be"):
        fwd_statistics(a, level=0)
    with pytest.raises(ValueError, match="unknown wavelet"):
        fwd_statistics(a, wavelet="nope")
    with pytest.warns(FWDWarning, match="from 4 images, fewer than .* D = 48"):
        fwd_statistics(a, level=3)
    s3, s2 = fwd_statistics(random_uint8(50), level=3), fwd_statistics(random_uint8(200), level=2)
    with pytest.raises(ValueError, match="level differs"):
        fwd_from_statistics(s3, s2)


def test_frechet_distance_of_known_gaussians():
    """1-D check: (m1 - m2)^2 + (s1 - s2)^2 for N(m1, s1^2), N(m2, s2^2)."""
    assert frechet_distance([1.0], [[4.0]], [3.0], [[1.0]]) == pytest.approx(4.0 + 1.0)
    with pytest.raises(ValueError, match="shape"):
        frechet_distance(np.zeros(2), np.eye(2), np.zeros(3), np.eye(3))


# --------------------------------------------------------------------------
# Statistics files
# --------------------------------------------------------------------------


def test_stats_round_trip(tmp_path, digits):
    te, tr = digits
    a, b = fwd_statistics(te), fwd_statistics(tr[:300])
    a.save(tmp_path / "a.npz")
    loaded = FWDStats.load(tmp_path / "a.npz")
    assert (loaded.n, loaded.level, loaded.wavelet, loaded.image_size) == (450, 4, "haar", (32, 32))
    assert np.array_equal(loaded.mu, a.mu) and np.array_equal(loaded.sigma, a.sigma)
    assert fwd_from_statistics(loaded, b) == fwd_from_statistics(a, b)
    assert fwd(loaded, tr[:300]) == fwd_from_statistics(a, b)  # a saved reference set stands in for images


def test_bad_stats_files_raise_value_error(tmp_path):
    good = fwd_statistics(random_uint8(20), level=4)
    bad = {
        "garbage.npz": lambda p: p.write_bytes(b"not a zip file"),
        "array.npy": lambda p: np.save(p, np.zeros(3)),
        "pytorchfwd.npz": lambda p: np.savez(p, mu=good.mu, sigma=good.sigma),
        "pickled.npz": lambda p: np.savez(p, **{**_entries(good), "wavelet": np.array([{"x": 1}], dtype=object)}),
        "shape.npz": lambda p: np.savez(p, **{**_entries(good), "mu": good.mu[:, :5]}),
        "level.npz": lambda p: np.savez(p, **{**_entries(good), "level": np.int64(3)}),
    }
    messages = {"pytorchfwd.npz": "pytorchfwd", "shape.npz": "mu of shape", "level.npz": "mu of shape"}
    for name, write in bad.items():
        path = tmp_path / name
        write(path)
        with pytest.raises(ValueError, match=messages.get(name)) as info:
            FWDStats.load(path)
        assert name in str(info.value)
    with pytest.raises(ValueError, match="not found"):
        FWDStats.load(tmp_path / "missing.npz")


def _entries(stats: FWDStats) -> dict:
    return dict(format=np.int64(1), mu=stats.mu, sigma=stats.sigma, n=np.int64(stats.n), level=np.int64(stats.level),
                wavelet=np.str_(stats.wavelet), height=np.int64(32), width=np.int64(32), log_scale=np.bool_(False))


# --------------------------------------------------------------------------
# Image folders
# --------------------------------------------------------------------------


def test_folder_errors(tmp_path):
    with pytest.raises(ValueError, match="not found"):
        load_image_folder(tmp_path / "nope")
    with pytest.raises(ValueError, match="no readable images"):
        load_image_folder(tmp_path)
    (tmp_path / "notes.txt").write_text("hello")
    with pytest.warns(FWDWarning, match="notes.txt"), pytest.raises(ValueError, match="no readable images"):
        load_image_folder(tmp_path)


def test_folder_skips_non_images_converts_to_rgb_and_resizes(tmp_path):
    imgs = random_uint8(3, seed=4)
    for i, im in enumerate(imgs):
        Image.fromarray(im).save(tmp_path / f"{i}.png")
    Image.fromarray(imgs[0][:, :, 0]).save(tmp_path / "3_gray.png")  # mode L -> RGB
    (tmp_path / "readme.txt").write_text("not an image")
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # no resize warning while all sizes agree...
        with pytest.warns(FWDWarning, match="skipped 1 file.*readme.txt"):  # ...only the skip
            out = load_image_folder(tmp_path)
    assert out.shape == (4, 32, 32, 3) and out.dtype == np.uint8
    np.testing.assert_array_equal(out[:3], imgs)
    np.testing.assert_array_equal(out[3], np.repeat(imgs[0][:, :, :1], 3, axis=2))

    (tmp_path / "readme.txt").unlink()
    Image.fromarray(random_uint8(1, size=48)[0]).save(tmp_path / "4_big.png")
    with pytest.warns(FWDWarning, match="resized 1 of 5 to the most common size 32x32"):
        out = load_image_folder(tmp_path)
    assert out.shape == (5, 32, 32, 3)
    np.testing.assert_array_equal(out[0], imgs[0])
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # an explicit size is not worth a warning
        assert load_image_folder(tmp_path, size=16).shape == (5, 16, 16, 3)
