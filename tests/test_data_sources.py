"""The user's own training data (ditkit.data.sources): folder, webdataset and hf kinds.

Every kind must give the same decoded images and captions for the same files; map-style
batches (folder, hf) are a function of (seed, step) whose rank slices concatenate to the
global batch; webdataset streams split shards disjointly over ranks and workers and resume
at any step; corrupt files are skipped and counted; bad input is a clear error."""

from __future__ import annotations

import io
import json
import pickle
import tarfile
import warnings
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from ditkit.core.config import DataConfig, load_config
from ditkit.data import TrainingBatch, check_data, data_captions, make_batch, training_batch
from ditkit.data.sources import FolderSource, HFSource, WebDatasetSource, make_source, open_source
from ditkit.data.sources.images import UnreadableSample, decode_image
from ditkit.data.sources.wds import stream_shards

N = 12
SIZE = 32


def sample_image(i: int) -> Image.Image:
    """Image i: random pixels of a size and shape that differ per image; every third has alpha."""
    rng = np.random.default_rng(i)
    h, w = 36 + 3 * i, 30 + 5 * i
    if i % 3 == 2:
        return Image.fromarray(rng.integers(0, 256, (h, w, 4), dtype=np.uint8), "RGBA")
    return Image.fromarray(rng.integers(0, 256, (h, w, 3), dtype=np.uint8), "RGB")


def caption(i: int) -> str:
    return f"sample {i}: " + " ".join(["word"] * (i % 4 + 1))


def png_bytes(im: Image.Image) -> bytes:
    buf = io.BytesIO()
    im.save(buf, "PNG")
    return buf.getvalue()


def write_tar(path: Path, members: list[tuple[str, bytes]]) -> None:
    with tarfile.open(path, "w") as tar:
        for name, data in members:
            info = tarfile.TarInfo(name)
            info.size = len(data)
            tar.addfile(info, io.BytesIO(data))


@pytest.fixture(scope="module")
def data(tmp_path_factory):
    """The same 12 captioned PNGs as a folder, as 4 webdataset shards of 3, as a datasets
    save_to_disk folder and as an imagefolder with metadata.jsonl."""
    import datasets

    root = tmp_path_factory.mktemp("sources")
    pngs = [png_bytes(sample_image(i)) for i in range(N)]
    folder = root / "folder"
    (folder / "sub").mkdir(parents=True)
    for i, png in enumerate(pngs):
        where = folder / "sub" if i >= 8 else folder  # recursive
        (where / f"{i:02d}.png").write_bytes(png)
        (where / f"{i:02d}.txt").write_text(caption(i) + "\n", encoding="utf-8")
    shards = root / "shards"
    shards.mkdir()
    for s in range(4):
        write_tar(shards / f"train-{s:06d}.tar",
                  [m for i in range(3 * s, 3 * s + 3) for m in ((f"{i:02d}.png", pngs[i]),
                                                                 (f"{i:02d}.txt", caption(i).encode()))])
    features = datasets.Features({"image": datasets.Image(), "text": datasets.Value("string")})
    ds = datasets.Dataset.from_dict({"image": [{"bytes": p, "path": None} for p in pngs],
                                     "text": [caption(i) for i in range(N)]}, features=features)
    ds.save_to_disk(str(root / "hf"))
    imagefolder = root / "imagefolder"
    imagefolder.mkdir()
    with open(imagefolder / "metadata.jsonl", "w") as f:
        for i, png in enumerate(pngs):
            (imagefolder / f"{i:02d}.png").write_bytes(png)
            f.write(json.dumps({"file_name": f"{i:02d}.png", "caption": caption(i)}) + "\n")
    return {"root": root, "pngs": pngs, "folder": folder, "hf": root / "hf", "imagefolder": imagefolder,
            "shards": str(shards / "train-{000000..000003}.tar"), "shard_dir": shards}


def cfg(kind: str, path, **kw) -> DataConfig:
    return DataConfig(kind=kind, path=str(path), size=SIZE, **kw)


def all_samples(source) -> dict[str, np.ndarray]:
    """caption -> decoded image for every sample of a source."""
    if isinstance(source, WebDatasetSource):
        out = {}
        for shard in source.shards:
            for raw in source.read_shard(shard):
                image, text = source.decode(raw, SIZE)
                out[text] = image
        return out
    return {c: im for c, im in (source.read(i, SIZE)[::-1] for i in range(len(source)))}


# -- decoding and preprocessing ----------------------------------------------------------------


def test_every_kind_decodes_the_same_images_and_captions(data):
    expected = {caption(i): decode_image(png, SIZE) for i, png in enumerate(data["pngs"])}
    for kind, path in (("folder", data["folder"]), ("webdataset", data["shards"]), ("hf", data["hf"]),
                       ("hf", data["imagefolder"]), ("folder", data["imagefolder"]),
                       ("webdataset", data["shard_dir"])):
        got = all_samples(make_source(cfg(kind, path)))
        assert sorted(got) == sorted(expected), (kind, path)
        for text, image in expected.items():
            assert image.shape == (3, SIZE, SIZE) and image.dtype == np.float32
            assert np.array_equal(got[text], image), (kind, path, text)


def test_every_kind_lists_all_its_captions(data):
    for kind, path in (("folder", data["folder"]), ("webdataset", data["shards"]), ("hf", data["hf"]),
                       ("hf", data["imagefolder"])):
        assert sorted(data_captions(cfg(kind, path))) == sorted(caption(i) for i in range(N)), kind


def test_preprocessing_composites_alpha_on_white_and_crops_the_centre():
    # A 96 x 32 image: blue outer thirds, red centre square. The centre crop keeps only red.
    im = Image.new("RGB", (96, 32), (0, 0, 255))
    im.paste((255, 0, 0), (32, 0, 64, 32))
    out = decode_image(png_bytes(im), 32)
    assert np.allclose(out[:, 4:-4, 4:-4], np.array([1, -1, -1], np.float32)[:, None, None])
    # Fully transparent black pixels become white, not black.
    clear = Image.new("RGBA", (40, 40), (0, 0, 0, 0))
    assert np.array_equal(decode_image(png_bytes(clear), 32), np.ones((3, 32, 32), np.float32))
    # Values are in [-1, 1] with both ends reached.
    grad = Image.fromarray(np.tile(np.arange(256, dtype=np.uint8), (256, 1)))
    out = decode_image(png_bytes(grad), 256)
    assert out.min() == -1.0 and out.max() == 1.0
    with pytest.raises(UnreadableSample, match="cannot decode image"):
        decode_image(b"not an image", 32)


# -- map-style batches ---------------------------------------------------------------------------


@pytest.mark.parametrize("kind", ["folder", "hf"])
def test_map_style_batches_are_a_function_of_seed_and_step(data, kind):
    c = cfg(kind, data[kind])
    batch = 4
    seen = []
    for step in range(N // batch):  # one epoch: every sample exactly once
        x, captions = training_batch(c, 7, step, batch, SIZE)
        assert x.shape == (batch, 3, SIZE, SIZE) and x.dtype == torch.float32
        seen += captions
        again = make_source(c).batch(7, step, batch, SIZE, slice(0, batch))  # a fresh index, same batch
        assert again[1] == captions and torch.equal(torch.from_numpy(again[0]), x)
    assert sorted(seen) == sorted(caption(i) for i in range(N))
    epoch2 = [c_ for step in range(3, 6) for c_ in training_batch(c, 7, step, batch, SIZE)[1]]
    assert sorted(epoch2) == sorted(seen) and epoch2 != seen  # a new permutation per epoch
    assert training_batch(c, 8, 0, batch, SIZE)[1] != training_batch(c, 7, 0, batch, SIZE)[1]


@pytest.mark.parametrize("kind", ["folder", "hf"])
def test_rank_slices_concatenate_to_the_global_batch(data, kind):
    c = cfg(kind, data[kind])
    for step in (0, 5):
        x, captions = training_batch(c, 0, step, 4, SIZE)
        parts = [training_batch(c, 0, step, 4, SIZE, rank=r, world=4) for r in range(4)]
        assert torch.equal(torch.cat([p[0] for p in parts]), x)
        assert sum((p[1] for p in parts), []) == captions
        halves = [training_batch(c, 0, step, 4, SIZE, rank=r, world=2) for r in range(2)]
        assert sum((p[1] for p in halves), []) == captions


def test_folder_and_hf_give_the_same_batches(data):
    for step in range(4):
        a = training_batch(cfg("folder", data["folder"]), 3, step, 3, SIZE)
        b = training_batch(cfg("hf", data["hf"]), 3, step, 3, SIZE)
        assert a[1] == b[1] and torch.equal(a[0], b[0])


def test_builtin_batches_unchanged(tmp_path):
    for dataset, size in (("shapes", 32), ("digits", 32)):
        c = DataConfig(dataset=dataset, size=size)
        x, captions = make_batch(dataset, 5, 3, 4, size)
        got = training_batch(c, 5, 3, 4, size)
        assert isinstance(got, TrainingBatch) and got.skipped == 0
        assert torch.equal(got[0], x) and got[1] == captions
        assert torch.equal(training_batch(c, 5, 3, 4, size, rank=1, world=2)[0], x[2:])
    assert DataConfig().dataset == "shapes" and DataConfig().kind == "builtin"


def test_training_batch_pickles_with_its_skipped_count():
    batch = TrainingBatch(torch.zeros(2, 3, 4, 4), ["a", "b"], skipped=3)
    back = pickle.loads(pickle.dumps(batch))
    x, captions = back
    assert back.skipped == 3 and captions == ["a", "b"] and torch.equal(x, batch[0])


# -- webdataset ---------------------------------------------------------------------------------


def test_webdataset_streams_are_disjoint_and_cover_the_shards(data):
    shards = make_source(cfg("webdataset", data["shards"])).shards
    for world, workers in ((1, 1), (2, 1), (1, 2), (2, 2), (4, 1)):
        streams = [stream_shards(shards, r, world, j, workers) for r in range(world) for j in range(workers)]
        flat = [s for stream in streams for s in stream]
        assert sorted(flat) == sorted(shards) and len(set(flat)) == len(flat)
    with pytest.raises(ValueError, match="at least 8"):
        stream_shards(shards, 0, 4, 0, 2)
    check_data(cfg("webdataset", data["shards"]), world=2, workers=2)  # what the trainer checks first
    with pytest.raises(ValueError, match="4 shards but 1 ranks x 5 data workers"):
        check_data(cfg("webdataset", data["shards"]), world=1, workers=5)


def test_webdataset_batches_split_by_rank_and_worker(data):
    """world 2 x 2 workers: each stream owns one shard of 3 samples; the 4 streams' first
    epoch (steps 0..5, one sample per rank per step) is every sample exactly once."""
    source = make_source(cfg("webdataset", data["shards"]))
    seen = {}
    for step in range(6):
        for rank in range(2):
            _, captions, skipped = source.batch(0, step, 2, SIZE, slice(rank, rank + 1), rank, 2,
                                                worker=(step % 2, 2))
            assert skipped == 0
            seen.setdefault((rank, step % 2), []).extend(captions)
    everything = [c for stream in seen.values() for c in stream]
    assert sorted(everything) == sorted(caption(i) for i in range(N))
    for (rank, j), captions in seen.items():  # each stream reads only its own shard
        (shard,) = stream_shards(source.shards, rank, 2, j, 2)
        first = int(Path(shard).name[6:12]) * 3
        assert sorted(captions) == sorted(caption(i) for i in range(first, first + 3))


def test_webdataset_resumes_at_any_step(data):
    c = cfg("webdataset", data["shards"])
    run = [training_batch(c, 1, step, 4, SIZE) for step in range(8)]  # 32 samples: almost 3 epochs
    for epoch in range(2):
        assert sorted(cap for b in run[3 * epoch:3 * epoch + 3] for cap in b[1]) == sorted(caption(i) for i in range(N))
    for step in (7, 2, 5, 0):  # a fresh process (a new source) asked for one step, in any order
        fresh = make_source(c)
        x, captions, _ = fresh.batch(1, step, 4, SIZE, slice(0, 4), 0, 1)
        assert captions == run[step][1] and torch.equal(torch.from_numpy(x), run[step][0])
    source = make_source(c)  # one source going back and forth
    for step in (6, 1, 7, 0, 4):
        assert source.batch(1, step, 4, SIZE, slice(0, 4), 0, 1)[1] == run[step][1]


def test_webdataset_in_dataloader_workers(data):
    """Two real DataLoader workers each read one stream, as in training (step k -> worker k mod 2)."""

    class Steps(torch.utils.data.IterableDataset):
        def __iter__(self):
            info = torch.utils.data.get_worker_info()
            for step in range(info.id, 6, info.num_workers):
                batch = training_batch(cfg("webdataset", data["shards"]), 0, step, 2, SIZE)
                yield {"step": step, "captions": batch[1], "skipped": batch.skipped}

    loader = torch.utils.data.DataLoader(Steps(), batch_size=None, num_workers=2)
    got = list(loader)
    assert [b["step"] for b in got] == list(range(6))
    captions = [c for b in got for c in b["captions"]]
    assert sorted(captions) == sorted(caption(i) for i in range(N))  # 2 streams x 2 shards = one epoch
    explicit = make_source(cfg("webdataset", data["shards"]))
    for b in got:
        assert explicit.batch(0, b["step"], 2, SIZE, slice(0, 2), 0, 1, worker=(b["step"] % 2, 2))[1] == b["captions"]


# -- corrupt files and bad input -----------------------------------------------------------------


def copy_folder(src: Path, dst: Path) -> Path:
    dst.mkdir()
    for f in src.rglob("*"):
        if f.is_file():
            (dst / f.name).write_bytes(f.read_bytes())
    return dst


def test_corrupt_image_is_skipped_counted_and_replaced_deterministically(data, tmp_path):
    folder = copy_folder(data["folder"], tmp_path / "folder")
    (folder / "03.png").write_bytes(data["pngs"][3][:60])  # truncated PNG
    c = cfg("folder", folder)

    def epoch():
        batches = [make_source(c).batch(0, step, 4, SIZE, slice(0, 4)) for step in range(3)]
        return [cap for b in batches for cap in b[1]], sum(b[2] for b in batches)

    with pytest.warns(UserWarning, match="03.png"):
        captions, skipped = epoch()
    assert skipped == 1 and len(captions) == N and caption(3) not in captions
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        assert epoch() == (captions, skipped)
        batches = [training_batch(c, 0, step, 4, SIZE) for step in range(3)]
    assert sum(b.skipped for b in batches) == 1


def test_invalid_utf8_caption_is_skipped_and_counted(data, tmp_path):
    folder = copy_folder(data["folder"], tmp_path / "folder")
    (folder / "05.txt").write_bytes(b"caf\xe9 au lait")
    c = cfg("folder", folder)
    with pytest.warns(UserWarning, match="not valid UTF-8"):
        batches = [make_source(c).batch(0, step, 4, SIZE, slice(0, 4)) for step in range(3)]
    assert sum(b[2] for b in batches) == 1 and all(len(b[1]) == 4 for b in batches)
    with pytest.warns(UserWarning, match="not valid UTF-8"):
        assert len(list(data_captions(c))) == N - 1


def test_webdataset_corrupt_sample_and_truncated_shard(data, tmp_path):
    shards = tmp_path / "shards"
    shards.mkdir()
    pngs = data["pngs"]
    write_tar(shards / "a.tar", [("00.png", pngs[0]), ("00.txt", caption(0).encode()),
                                 ("01.png", b"\x89PNG broken"), ("01.txt", caption(1).encode()),
                                 ("02.png", pngs[2]), ("02.txt", caption(2).encode())])
    write_tar(shards / "b.tar", [(f"{i:02d}.{ext}", pngs[i] if ext == "png" else caption(i).encode())
                                 for i in range(3, 9) for ext in ("png", "txt")])
    whole = (shards / "b.tar").read_bytes()
    (shards / "b.tar").write_bytes(whole[:len(pngs[3]) + len(pngs[4]) + 5000])  # cut inside sample 4 or 5
    c = cfg("webdataset", shards)
    source = make_source(c)
    with pytest.warns(UserWarning) as record:
        batches = [source.batch(0, step, 2, SIZE, slice(0, 2), 0, 1) for step in range(6)]
    messages = " | ".join(str(w.message) for w in record)
    assert "a.tar:01" in messages and "b.tar is broken" in messages
    assert all(len(b[1]) == 2 and b[0].shape == (2, 3, SIZE, SIZE) for b in batches)
    assert sum(b[2] for b in batches) >= 1 and caption(1) not in [cap for b in batches for cap in b[1]]
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        assert [b[1] for b in batches] == [make_source(c).batch(0, s, 2, SIZE, slice(0, 2), 0, 1)[1] for s in range(6)]


def test_bad_inputs_are_clear_errors(data, tmp_path):
    missing = tmp_path / "nowhere"
    for kind in ("folder", "hf"):
        with pytest.raises(ValueError, match="does not exist"):
            make_source(cfg(kind, missing))
    with pytest.raises(ValueError, match="do not exist"):
        make_source(cfg("webdataset", tmp_path / "s-{000..003}.tar"))
    empty = tmp_path / "empty"
    empty.mkdir()
    (empty / "notes.txt").write_text("no images here")
    with pytest.raises(ValueError, match="holds no images"):
        make_source(cfg("folder", empty))
    with pytest.raises(ValueError, match="holds no webdataset shards"):
        make_source(cfg("webdataset", empty))
    uncaptioned = tmp_path / "uncaptioned"
    uncaptioned.mkdir()
    (uncaptioned / "a.png").write_bytes(data["pngs"][0])
    with pytest.raises(ValueError, match="1 images but no captions"):
        make_source(cfg("folder", uncaptioned))
    (uncaptioned / "metadata.jsonl").write_text('{"file_name": "a.png"}\n')
    with pytest.raises(ValueError, match="line 1 needs a caption"):
        make_source(cfg("folder", uncaptioned))
    import datasets

    no_image = tmp_path / "no_image"
    datasets.Dataset.from_dict({"text": ["a", "b"], "score": [1, 2]}).save_to_disk(str(no_image))
    with pytest.raises(ValueError, match=r"no image column .*\['text', 'score'\]"):
        make_source(cfg("hf", no_image))
    with pytest.raises(ValueError, match="unknown data.kind 'csv'; allowed: builtin, folder, webdataset, hf"):
        DataConfig(kind="csv", path="x")
    with pytest.raises(ValueError, match="needs data.path"):
        DataConfig(kind="folder")
    with pytest.raises(ValueError, match="leave it out"):
        DataConfig(kind="folder", path="x", dataset="shapes")
    with pytest.raises(ValueError, match="data.path is for data.kind"):
        DataConfig(path="x")
    with pytest.raises(ValueError, match="data.mix"):
        DataConfig(kind="folder", path="x", mix={"counting": 1.0})
    with pytest.raises(ValueError, match="no fixed caption list"):
        data_captions(DataConfig())
    assert DataConfig(kind="webdataset", path=["a.tar", "b.tar"]).path == "a.tar::b.tar"


def test_some_images_without_captions_are_left_out_with_a_warning(data, tmp_path):
    folder = copy_folder(data["folder"], tmp_path / "folder")
    (folder / "07.txt").unlink()
    with pytest.warns(UserWarning, match="1 of 12 images have no caption"):
        source = make_source(cfg("folder", folder))
    assert len(source) == N - 1 and source.index_skipped == 1


def test_open_source_is_cached_per_path(data):
    c = cfg("folder", data["folder"])
    assert open_source(c) is open_source(cfg("folder", str(data["folder"]) + "/"))
    assert isinstance(open_source(c), FolderSource) and isinstance(open_source(cfg("hf", data["hf"])), HFSource)


def test_example_config_loads_and_its_data_is_checked_before_training(tmp_path):
    path = Path(__file__).resolve().parents[1] / "configs" / "folder-64.yaml"
    c = load_config(path, [f"data.path={tmp_path / 'missing'}"]).data
    assert c.kind == "folder" and c.dataset == "" and c.size == 64
    with pytest.raises(ValueError, match="does not exist"):
        check_data(c)
    check_data(DataConfig())  # the built-in worlds need no check


def test_training_on_webdataset_resumes_exactly(data, train_config):
    """A run stopped after step 2 and resumed takes the loss sequence of an uninterrupted run."""
    from dataclasses import replace

    from ditkit.training.train import train

    data_cfg = cfg("webdataset", data["shards"])

    def losses(c):
        rows = [json.loads(line) for line in (Path(c.train.output_dir) / "log.jsonl").read_text().splitlines()]
        return [r["loss"] for r in rows if "loss" in r]

    whole = replace(train_config("whole", steps=4, batch_size=4), data=data_cfg)
    train(whole, progress=False)
    split = replace(train_config("split", steps=4, batch_size=4), data=data_cfg)
    train(split, progress=False, stop_after=2)
    assert len(losses(split)) == 2
    train(split, resume=True, progress=False)
    assert len(losses(whole)) == 4 and losses(split) == losses(whole)


def test_builtin_benchmark_during_training_is_refused_for_user_data(data):
    from ditkit.core.config import Config
    from ditkit.training.train import check_eval

    folder_cfg = Config(data=cfg("folder", data["folder"]))
    folder_cfg.train.eval_every = 100
    with pytest.raises(ValueError, match="set train.eval_every=0"):
        check_eval(folder_cfg)
    folder_cfg.train.eval_every = 0
    check_eval(folder_cfg)
    check_eval(Config())  # the shapes world keeps its ShapesEval
