"""Fréchet Wavelet Distance (FWD): FID's Fréchet distance on wavelet packets instead of Inception features.

Veeramacheneni et al., "Fréchet Wavelet Distance: A Domain-Agnostic Metric for
Image Generation", ICLR 2025. Each image is split by a 2-D wavelet packet
transform of depth `level` into P = 4**level packets (frequency bands); every
packet is flattened to a D = 3*h*w vector, a Gaussian (mean, covariance) is fitted
per packet over the image set (covariance normalised by N - 1), and FWD is the mean
over packets of the squared Fréchet distance between the two sets' Gaussians
(the paper's method section):
    FWD = (1/P) sum_p d_F(N(mu_r,p, S_r,p), N(mu_g,p, S_g,p))^2.
No pretrained network is involved, so there is no ImageNet bias and nothing to download.

The peer is the authors' package `pytorchfwd` (1.0.1). Its math lives in
`pytorchfwd.freq_math` and is matched here exactly (tests/test_fwd.py checks it):
  - input: float (N, 3, H, W) in [0, 1] (torchvision ToTensor), computed in
    float64 (its `fwd.py` sets torch's default dtype to float64 at import);
  - packets: `ptwt.WaveletPacket2D(x, pywt.Wavelet(w), maxlevel=level)` with
    ptwt's default "reflect" boundary, non-separable, no extra normalisation;
    the level-`level` nodes in natural order (product of "a","h","v","d"),
    stacked on dim 1 -> (N, P, 3, h, w), flattened channel-major to (N, P, 3*h*w);
  - optional log scaling log(|c| + 1e-6) (its --log_scale flag, off by default);
  - per-packet mean and unbiased covariance (torch.cov), the TTUR/FID Fréchet
    distance per packet, and the plain mean over packets; defaults Haar, level 4.
We do not call pytorchfwd itself: its wheel requires torchvision and pins
ptwt==0.1.8 and scipy==1.11.1, and importing its `fwd` module changes torch's
global default dtype. The twenty lines above are re-stated on ptwt >= 1.0, and the
statistics are accumulated batch by batch, so a large image set never has to be
held as one float64 feature tensor.

Images at the edges are uint8 (N, H, W, 3) arrays (what PIL gives) or float
(N, 3, H, W) tensors in [0, 1]. Saved statistics are .npz files whose `mu` and
`sigma` keys are the ones pytorchfwd's CLI reads, plus metadata ditkit checks.
"""

from __future__ import annotations

import os
import warnings
import zipfile
from collections import Counter
from dataclasses import dataclass
from pathlib import Path
from typing import Iterable, Iterator, Union

import numpy as np
import torch
from PIL import Image, UnidentifiedImageError

from ditkit.core.files import atomic_write

ImageBatch = Union[np.ndarray, torch.Tensor]
Images = Union[ImageBatch, Iterable[ImageBatch]]

DEFAULT_LEVEL = 4  # pytorchfwd's default --max_level
DEFAULT_WAVELET = "haar"  # pytorchfwd's default --wavelet (Haar)
STATS_FORMAT = 1
_STATS_KEYS = ("format", "mu", "sigma", "n", "level", "wavelet", "height", "width", "log_scale")
_LOG_EPS = 1e-6  # pytorchfwd.freq_math.forward_wavelet_packet_transform's log offset


class FWDWarning(UserWarning):
    """A warning about FWD inputs: too few images for a stable covariance, skipped or resized files."""


# --------------------------------------------------------------------------
# Checks
# --------------------------------------------------------------------------


def _wavelet_lib():
    try:
        import ptwt
        import pywt
    except ImportError as e:  # an optional dependency, as docs/architecture.md asks (a light core)
        raise ImportError("FWD needs ptwt and PyWavelets: pip install 'ditkit[eval]'") from e
    return ptwt, pywt


def _check_wavelet(wavelet: str) -> str:
    _, pywt = _wavelet_lib()
    name = str(wavelet).lower()  # pytorchfwd's CLI spells the default "Haar"; pywt names are lower case
    allowed = pywt.wavelist(kind="discrete")
    if name not in allowed:
        raise ValueError(f"unknown wavelet {wavelet!r}; allowed: a discrete PyWavelets wavelet such as "
                         f"'haar', 'db2', 'sym4' (all: pywt.wavelist(kind='discrete'), {len(allowed)} names)")
    return name


def _check_level(level: int) -> int:
    if isinstance(level, bool) or not isinstance(level, (int, np.integer)) or level < 1:
        raise ValueError(f"level must be an integer >= 1 (the packet tree depth; 4**level packets), got {level!r}")
    return int(level)


def _packet_side(n: int, wavelet: str, level: int) -> int:
    """Side of a level-`level` packet for an input side n: each level halves it, plus the
    filter overhang that ptwt's "reflect" padding keeps (pywt.dwt_coeff_len; 0 for Haar)."""
    _, pywt = _wavelet_lib()
    dec_len = pywt.Wavelet(wavelet).dec_len
    for _ in range(level):
        n = pywt.dwt_coeff_len(n, dec_len, "reflect")
    return n


def packet_dim(height: int, width: int, level: int = DEFAULT_LEVEL, wavelet: str = DEFAULT_WAVELET) -> int:
    """D, the length of one packet's feature vector: 3 * h * w for images of size (height, width)."""
    wavelet, level = _check_wavelet(wavelet), _check_level(level)
    return 3 * _packet_side(height, wavelet, level) * _packet_side(width, wavelet, level)


def _check_size(height: int, width: int, level: int) -> None:
    # Each level halves the image; with sides divisible by 2**level no level has an odd
    # side, so Haar packets tile the image exactly and no boundary padding enters them.
    k = 2 ** level
    if height % k or width % k:
        near = f"{k * max(1, round(height / k))}x{k * max(1, round(width / k))}"
        raise ValueError(f"image size {height}x{width} does not suit level {level}: height and width must be "
                         f"multiples of 2**level = {k} (nearest allowed size {near}); resize the images "
                         f"or choose a level with 2**level dividing both sides")


def _image_size(batch: ImageBatch) -> tuple[int, int]:
    """(H, W) of a batch after checking its layout: uint8 (N, H, W, 3) or float (N, 3, H, W)."""
    dtype = batch.dtype
    is_uint8 = dtype == np.uint8 or dtype == torch.uint8
    is_float = (np.issubdtype(dtype, np.floating) if isinstance(batch, np.ndarray) else dtype.is_floating_point)
    if not (is_uint8 or is_float):
        raise ValueError(f"images must be uint8 (N, H, W, 3) or float (N, 3, H, W) in [0, 1], got dtype {dtype}")
    shape = tuple(batch.shape)
    if is_uint8 and (len(shape) != 4 or shape[3] != 3):
        raise ValueError(f"uint8 images must have shape (N, H, W, 3) (RGB, channels last), got {shape}")
    if is_float and (len(shape) != 4 or shape[1] != 3):
        raise ValueError(f"float images must have shape (N, 3, H, W) (RGB, channels first) in [0, 1], got {shape}")
    return (shape[1], shape[2]) if is_uint8 else (shape[2], shape[3])


def _to_float(batch: ImageBatch, device: torch.device) -> torch.Tensor:
    """A checked batch -> float64 (B, 3, H, W) in [0, 1] on `device`."""
    if isinstance(batch, np.ndarray):
        batch = torch.from_numpy(np.array(batch))  # copy just this batch: from_numpy warns on read-only arrays
    x = batch.to(device)
    if x.dtype == torch.uint8:
        return x.permute(0, 3, 1, 2).to(torch.float64).div_(255.0)  # ToTensor's scaling, as pytorchfwd reads files
    x = x.to(torch.float64)
    lo, hi = (float(x.min()), float(x.max())) if x.numel() else (0.0, 0.0)
    if lo < -1e-3 or hi > 1 + 1e-3:  # ditkit's models work in [-1, 1]; the metric is defined on [0, 1]
        raise ValueError(f"float images must be in [0, 1], got values in [{lo:.3g}, {hi:.3g}]; "
                         "for ditkit's [-1, 1] tensors pass (x + 1) / 2")
    return x


def _batches(images: Images, batch_size: int) -> Iterator[ImageBatch]:
    """One array/tensor is cut into batches; any other iterable is taken as a stream of batches."""
    if isinstance(images, (np.ndarray, torch.Tensor)):
        _image_size(images)
        for i in range(0, images.shape[0], batch_size):
            yield images[i:i + batch_size]
        return
    if isinstance(images, (str, bytes, Path)):
        raise ValueError("images must be an array, a tensor or an iterable of them, not a path; "
                         "use load_image_folder(path) first")
    for batch in images:
        if not isinstance(batch, (np.ndarray, torch.Tensor)):
            raise ValueError(f"an iterable of image batches must yield arrays or tensors, got {type(batch).__name__}")
        yield batch


# --------------------------------------------------------------------------
# Wavelet packets
# --------------------------------------------------------------------------


def _packets(x: torch.Tensor, level: int, wavelet: str, log_scale: bool) -> torch.Tensor:
    """float64 (B, 3, H, W) -> (B, P, 3*h*w): pytorchfwd.freq_math.forward_wavelet_packet_transform, flattened
    as its compute_packet_statistics does (packet-major, then channel, row, column)."""
    ptwt, pywt = _wavelet_lib()
    wp = ptwt.WaveletPacket2D(x, pywt.Wavelet(wavelet), mode="reflect", maxlevel=level)
    nodes = ptwt.WaveletPacket2D.get_natural_order(level)  # "aa..a", "aa..h", ... : itertools.product order
    p = torch.stack([wp[node] for node in nodes], dim=1)  # (B, P, 3, h, w)
    if log_scale:
        p = torch.log(p.abs() + _LOG_EPS)
    return p.flatten(2)


def wavelet_packet_features(images: ImageBatch, level: int = DEFAULT_LEVEL, wavelet: str = DEFAULT_WAVELET,
                            log_scale: bool = False, device: str | torch.device | None = None) -> torch.Tensor:
    """Wavelet packet features of a set of images: float64 (N, P, D), P = 4**level, D = 3*h*w.

    images: uint8 (N, H, W, 3) (array or tensor; divided by 255) or float (N, 3, H, W) in [0, 1].
    H and W must be multiples of 2**level. Packets are in ptwt's natural order
    (itertools.product of "a", "h", "v", "d"), each flattened channel-major, as pytorchfwd does.
    """
    level, wavelet = _check_level(level), _check_wavelet(wavelet)
    height, width = _image_size(images)
    _check_size(height, width, level)
    dev = torch.device(device) if device is not None else _default_device(images)
    return _packets(_to_float(images, dev), level, wavelet, log_scale)


def _default_device(images: object) -> torch.device:
    return images.device if isinstance(images, torch.Tensor) else torch.device("cpu")


# --------------------------------------------------------------------------
# Statistics
# --------------------------------------------------------------------------


@dataclass(frozen=True, eq=False)
class FWDStats:
    """Per-packet Gaussians of one image set.

    mu: (P, D) float64 means; sigma: (P, D, D) float64 unbiased covariances;
    n: number of images; level, wavelet, log_scale: the transform;
    image_size: (H, W) of the images (two sets are comparable only if all of these agree).
    """
    mu: np.ndarray
    sigma: np.ndarray
    n: int
    level: int
    wavelet: str
    image_size: tuple[int, int]
    log_scale: bool = False

    def __post_init__(self) -> None:
        level, wavelet = _check_level(self.level), _check_wavelet(self.wavelet)
        mu, sigma = np.asarray(self.mu, dtype=np.float64), np.asarray(self.sigma, dtype=np.float64)
        height, width = (int(s) for s in self.image_size)
        _check_size(height, width, level)
        p, d = 4 ** level, packet_dim(height, width, level, wavelet)
        if mu.shape != (p, d) or sigma.shape != (p, d, d):
            raise ValueError(f"FWD statistics for level {level}, wavelet {wavelet!r}, {height}x{width} images need "
                             f"mu of shape {(p, d)} and sigma of shape {(p, d, d)}, "
                             f"got {mu.shape} and {sigma.shape}")
        if not (np.isfinite(mu).all() and np.isfinite(sigma).all()):
            raise ValueError("FWD statistics contain NaN or infinite values")
        if isinstance(self.n, bool) or int(self.n) != self.n or self.n < 2:
            raise ValueError(f"n (the number of images) must be an integer >= 2, got {self.n!r}")
        for name, value in (("mu", mu), ("sigma", sigma), ("n", int(self.n)), ("level", level),
                            ("wavelet", wavelet), ("image_size", (height, width)),
                            ("log_scale", bool(self.log_scale))):
            object.__setattr__(self, name, value)

    def save(self, path: str | os.PathLike) -> None:
        """Write an .npz (keys mu, sigma as pytorchfwd's CLI reads them, plus the metadata); atomic."""
        def write(tmp: str) -> None:
            with open(tmp, "wb") as f:  # a file object, so numpy does not append ".npz" to the name
                np.savez(f, format=np.int64(STATS_FORMAT), mu=self.mu, sigma=self.sigma, n=np.int64(self.n),
                         level=np.int64(self.level), wavelet=np.str_(self.wavelet),
                         height=np.int64(self.image_size[0]), width=np.int64(self.image_size[1]),
                         log_scale=np.bool_(self.log_scale))

        atomic_write(path, write)

    @classmethod
    def load(cls, path: str | os.PathLike) -> "FWDStats":
        """Read statistics written by save(); ValueError naming the problem for any other file."""
        path = Path(path)
        if not path.is_file():
            raise ValueError(f"FWD statistics file not found: {path}")
        try:
            f = np.load(path, allow_pickle=False)  # never unpickle: a stats file must not run code
        except (OSError, ValueError, EOFError, zipfile.BadZipFile, UnicodeError) as e:
            # numpy's own message for a non-archive talks about allow_pickle, which misleads
            raise ValueError(f"{path} is not a ditkit FWD statistics file: not an .npz archive (expected one written "
                             f"by `ditkit eval fwd --save-stats`, with keys {', '.join(_STATS_KEYS)})") from e
        if not isinstance(f, np.lib.npyio.NpzFile):
            raise ValueError(f"{path} holds a single array, not an .npz of FWD statistics "
                             f"(keys {', '.join(_STATS_KEYS)})")
        try:
            missing = [k for k in _STATS_KEYS if k not in f.files]
            if missing:
                hint = (" (it looks like pytorchfwd --save-packets output, which lacks the level, wavelet and image "
                        "size; recompute it with ditkit.evaluation.fwd.fwd_statistics)" if {"mu", "sigma"} <= set(f.files) else "")
                raise ValueError(f"{path} is missing FWD statistics keys {missing}; "
                                 f"expected {list(_STATS_KEYS)}{hint}")
            try:
                arrays = {k: f[k] for k in _STATS_KEYS}
            except (OSError, ValueError, EOFError, zipfile.BadZipFile) as e:
                raise ValueError(f"{path} has an unreadable entry ({e})") from e
        finally:
            f.close()
        fmt = _scalar(arrays, "format", "iu", path)
        if fmt != STATS_FORMAT:
            raise ValueError(f"{path} has FWD statistics format {fmt}; this ditkit reads format {STATS_FORMAT}")
        try:
            return cls(mu=arrays["mu"], sigma=arrays["sigma"], n=_scalar(arrays, "n", "iu", path),
                       level=_scalar(arrays, "level", "iu", path), wavelet=_scalar(arrays, "wavelet", "U", path),
                       image_size=(_scalar(arrays, "height", "iu", path), _scalar(arrays, "width", "iu", path)),
                       log_scale=_scalar(arrays, "log_scale", "b", path))
        except ValueError as e:
            raise ValueError(f"{path}: {e}") from e


def _scalar(arrays: dict, key: str, kinds: str, path: Path):
    a = arrays[key]
    if a.shape != () or a.dtype.kind not in kinds:
        raise ValueError(f"{path}: entry {key!r} must be a scalar of kind {kinds!r}, got shape {a.shape} "
                         f"dtype {a.dtype}")
    return a.item()


def fwd_statistics(images: Images, level: int = DEFAULT_LEVEL, wavelet: str = DEFAULT_WAVELET,
                   batch_size: int = 64, log_scale: bool = False,
                   device: str | torch.device | None = None) -> FWDStats:
    """Per-packet means and covariances of an image set, accumulated batch by batch.

    images: uint8 (N, H, W, 3) or float (N, 3, H, W) in [0, 1], as one array/tensor or an
    iterable of such batches (e.g. straight from a sampler). All images must share one size
    with sides divisible by 2**level. Needs N >= 2; warns (FWDWarning) when N < D, the
    per-packet dimension, because the covariance is then rank-deficient and FWD unstable.
    """
    level, wavelet = _check_level(level), _check_wavelet(wavelet)
    if isinstance(batch_size, bool) or not isinstance(batch_size, int) or batch_size < 1:
        raise ValueError(f"batch_size must be an integer >= 1, got {batch_size!r}")
    size, n = None, 0
    shift = s1 = s2 = None
    for batch in _batches(images, batch_size):
        if batch.shape[0] == 0:
            continue
        hw = _image_size(batch)
        if size is None:
            _check_size(*hw, level)
            size = hw
        elif hw != size:
            raise ValueError(f"all images must have one size; got {size[0]}x{size[1]} and then {hw[0]}x{hw[1]}")
        dev = torch.device(device) if device is not None else _default_device(batch)
        x = _packets(_to_float(batch, dev), level, wavelet, log_scale).transpose(0, 1)  # (P, B, D)
        if shift is None:
            # Sums are taken around the first batch's mean rather than 0, so the covariance
            # (S2 - n m m^T) / (n - 1) does not lose digits to cancellation when the mean is large
            # (the level-4 Haar LL packet is 16x the mean pixel).
            shift = x.mean(dim=1, keepdim=True)
            s1 = torch.zeros_like(shift[:, 0])
            s2 = torch.zeros(x.shape[0], x.shape[2], x.shape[2], dtype=x.dtype, device=x.device)
        x = x.to(shift.device) - shift
        s1 += x.sum(dim=1)
        s2 += x.transpose(1, 2) @ x
        n += x.shape[1]
    if n < 2:
        raise ValueError(f"FWD needs at least 2 images to estimate a covariance, got {n}")
    m = s1 / n
    mu = (shift[:, 0] + m).cpu().numpy()
    sigma = ((s2 - n * m[:, :, None] * m[:, None, :]) / (n - 1)).cpu().numpy()  # unbiased, as torch.cov
    d = mu.shape[1]
    if n < d:
        warnings.warn(f"FWD statistics from {n} images, fewer than the per-packet dimension D = {d} "
                      f"({size[0]}x{size[1]} images, level {level}): the covariances are rank-deficient and the "
                      f"distance is unstable; use at least {d} images or a higher level", FWDWarning, stacklevel=2)
    return FWDStats(mu=mu, sigma=sigma, n=n, level=level, wavelet=wavelet, image_size=size, log_scale=log_scale)


# --------------------------------------------------------------------------
# Distance
# --------------------------------------------------------------------------


def frechet_distance(mu1: np.ndarray, cov1: np.ndarray, mu2: np.ndarray, cov2: np.ndarray,
                     eps: float = 1e-6) -> float:
    """Fréchet distance of N(mu1, cov1) and N(mu2, cov2):
    |mu1 - mu2|^2 + tr(cov1 + cov2 - 2 (cov1 cov2)^(1/2))  (Dowson & Landau 1982; FID, Heusel et al. 2017).

    The TTUR/pytorch-fid computation that pytorchfwd.freq_math uses, without its print.
    """
    from scipy import linalg  # lazy: scipy.linalg is needed only here, keep importing this module light

    mu1, mu2 = np.atleast_1d(np.asarray(mu1, np.float64)), np.atleast_1d(np.asarray(mu2, np.float64))
    cov1, cov2 = np.atleast_2d(np.asarray(cov1, np.float64)), np.atleast_2d(np.asarray(cov2, np.float64))
    d = mu1.shape[0]
    if mu1.shape != (d,) or mu2.shape != (d,) or cov1.shape != (d, d) or cov2.shape != (d, d):
        raise ValueError(f"need two means of shape (D,) and two covariances of shape (D, D), got "
                         f"{mu1.shape}, {cov1.shape}, {mu2.shape}, {cov2.shape}")
    diff = mu1 - mu2
    with warnings.catch_warnings():
        # scipy warns "Matrix is singular" whenever a packet has a constant pixel (blank image
        # borders, empty high-frequency bands); the finite and imaginary-part checks below are
        # the FID code's answer to exactly that case, and fwd_statistics already warns when
        # there are too few images, so the scipy warning would only repeat itself per packet.
        warnings.simplefilter("ignore", linalg.LinAlgWarning)
        covmean = linalg.sqrtm(cov1 @ cov2)
    if not np.isfinite(covmean).all():
        # With fewer images than dimensions the covariances are singular and so is their
        # product; sqrtm can then fail. A small ridge eps*I on both makes them positive
        # definite, the same fallback as the FID reference code.
        offset = np.eye(d) * eps
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", linalg.LinAlgWarning)
            covmean = linalg.sqrtm((cov1 + offset) @ (cov2 + offset))
    if np.iscomplexobj(covmean):
        # cov1 cov2 is similar to a PSD matrix, so its square root has real eigenvalues;
        # rounding leaves tiny imaginary parts, dropped. Large ones mean the input is not
        # a pair of covariances at all.
        if not np.allclose(np.diagonal(covmean).imag, 0, atol=1e-3):
            raise ValueError(f"the covariance product has no real square root (imaginary part up to "
                             f"{np.abs(covmean.imag).max():.3g}); are cov1 and cov2 symmetric PSD matrices?")
        covmean = covmean.real
    return float(diff @ diff + np.trace(cov1) + np.trace(cov2) - 2 * np.trace(covmean))


def fwd_from_statistics(a: FWDStats, b: FWDStats) -> float:
    """FWD of two statistics: the mean over the P packets of the per-packet (squared) Fréchet distance."""
    for name in ("level", "wavelet", "image_size", "log_scale"):
        if getattr(a, name) != getattr(b, name):
            raise ValueError(f"FWD statistics are not comparable: {name} differs ({getattr(a, name)!r} vs "
                             f"{getattr(b, name)!r}); compute both with the same level, wavelet, log_scale "
                             f"and image size")
    return float(np.mean([frechet_distance(a.mu[p], a.sigma[p], b.mu[p], b.sigma[p]) for p in range(len(a.mu))]))


def fwd(images_a: Images | FWDStats, images_b: Images | FWDStats, level: int = DEFAULT_LEVEL,
        wavelet: str = DEFAULT_WAVELET, batch_size: int = 64, log_scale: bool = False,
        device: str | torch.device | None = None) -> float:
    """Fréchet Wavelet Distance between two image sets (either may be precomputed FWDStats).

    Images as for fwd_statistics: uint8 (N, H, W, 3) or float (N, 3, H, W) in [0, 1], one size
    throughout. Lower is closer; 0 for identical sets. Symmetric.
    """
    stats = [x if isinstance(x, FWDStats) else
             fwd_statistics(x, level=level, wavelet=wavelet, batch_size=batch_size, log_scale=log_scale,
                            device=device)
             for x in (images_a, images_b)]
    return fwd_from_statistics(*stats)


# --------------------------------------------------------------------------
# Image folders
# --------------------------------------------------------------------------


def load_image_folder(path: str | os.PathLike, size: int | tuple[int, int] | None = None) -> np.ndarray:
    """All images directly inside a folder (sorted by name, not recursive) as uint8 (N, H, W, 3) RGB.

    Problems that still leave a usable set are reported with warnings.warn(FWDWarning), so a
    caller can show, record or silence them: files PIL cannot read are skipped; with size=None,
    images of differing sizes are resized (bicubic, PIL) to the most common size, ties going to
    the size met first, because FWD needs one size and the majority size changes the fewest
    images. size=S or (H, W) resizes every image to that size, without a warning.
    Raises ValueError when the folder does not exist or holds no readable image.
    """
    folder = Path(path)
    if not folder.is_dir():
        raise ValueError(f"image folder not found: {folder}")
    target = None
    if size is not None:
        target = (size, size) if isinstance(size, int) else tuple(size)
        if len(target) != 2 or not all(isinstance(s, int) and s >= 1 for s in target):
            raise ValueError(f"size must be None, an int >= 1 or (height, width), got {size!r}")
    images, skipped = [], []
    for file in sorted(p for p in folder.iterdir() if p.is_file()):
        try:
            with Image.open(file) as im:
                images.append(im.convert("RGB"))  # RGB as pytorchfwd's loader; drops alpha, expands gray
        except (UnidentifiedImageError, OSError, ValueError):
            skipped.append(file.name)
    if skipped:
        shown = ", ".join(skipped[:5]) + (f" and {len(skipped) - 5} more" if len(skipped) > 5 else "")
        warnings.warn(f"skipped {len(skipped)} file(s) in {folder} that are not readable images: {shown}",
                      FWDWarning, stacklevel=2)
    if not images:
        raise ValueError(f"no readable images in {folder} (checked {len(skipped)} file(s); "
                         "any format PIL reads is allowed, e.g. PNG, JPEG)")
    sizes = Counter((im.height, im.width) for im in images)
    if target is None:
        target = sizes.most_common(1)[0][0]
        if len(sizes) > 1:
            moved = len(images) - sizes[target]
            warnings.warn(f"images in {folder} have {len(sizes)} different sizes; resized {moved} of {len(images)} "
                          f"to the most common size {target[0]}x{target[1]} (pass size= to choose)",
                          FWDWarning, stacklevel=2)
    h, w = target
    out = np.empty((len(images), h, w, 3), dtype=np.uint8)
    for i, im in enumerate(images):
        if (im.height, im.width) != (h, w):
            im = im.resize((w, h), Image.BICUBIC)
        out[i] = np.asarray(im)
    return out


def statistics_of(path: str | os.PathLike, level: int = DEFAULT_LEVEL) -> FWDStats:
    """FWD statistics of an image folder, or saved ones (a .npz file from FWDStats.save)."""
    p = Path(path)
    if p.suffix == ".npz":
        if not p.is_file():
            raise FileNotFoundError(f"statistics file {str(path)!r} does not exist")
        return FWDStats.load(p)
    return fwd_statistics(load_image_folder(p), level=level)
