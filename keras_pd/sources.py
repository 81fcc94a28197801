"""Random-access sources of training examples, read lazily, a batch of rows at a time.

A source knows its length, its example shape and its labels, and `read(indices)` returns
those rows as float32 in [-1, 1] (images stay uint8 in memory or on disk until then). Every
training run reads through one (`data.BatchStream`), so batch k is a pure function of
(seed, k) whatever the data's size, and a process reads only the rows it trains on:

| source | holds | `load_dataset` name |
|---|---|---|
| `ArraySource` | arrays in memory (uint8 images are scaled per batch) | digits, mnist5k, toy2d, teacher samples |
| `FolderSource` | a folder of PNG/JPEG files, decoded on read | `folder:PATH` |
| `TfdsSource` | a tfds dataset prepared as ArrayRecord (`tfds.data_source`) | `tfds:NAME[:SPLIT]` with `--stream` |

Bad files are one-line `DatasetError`s naming the file: found while scanning (an empty folder,
an empty class folder) before anything is written; found on read (a corrupt or truncated
image, a size other than the first image's without `image_size`), the run stops at that batch
with its last checkpoint intact, and resumes once the file is mended or removed.
"""

from __future__ import annotations

import os

import numpy as np

IMAGE_EXTENSIONS = (".png", ".jpg", ".jpeg")


class DatasetError(ValueError):
    """A dataset cannot be loaded (unknown name, missing data or package, a bad file)."""


def scale_uint8(images):
    """uint8 pixels [0, 255] -> float32 [-1, 1]: x = p / 127.5 - 1."""
    return np.asarray(images, np.float32) / np.float32(127.5) - np.float32(1.0)


class ArraySource:
    """Examples held in memory: float32 already in [-1, 1], or uint8 images scaled on read.

    Args:
        x: [N, ...] float or uint8 array.
        y: [N] int labels, or None.
    """

    def __init__(self, x, y=None):
        x = np.asarray(x)
        self.x = x if x.dtype == np.uint8 else x.astype(np.float32, copy=False)
        if self.x.ndim < 1 or self.x.shape[0] == 0:
            raise ValueError(f"x must be a non-empty array [N, ...], got shape {self.x.shape}")
        self.y = None if y is None else np.asarray(y).astype(np.int32, copy=False)
        if self.y is not None and self.y.shape != (self.x.shape[0],):
            raise ValueError(f"y must have shape [{self.x.shape[0]}] to match x, got "
                             f"{self.y.shape}")

    def __len__(self):
        return int(self.x.shape[0])

    @property
    def example_shape(self):
        return tuple(int(d) for d in self.x.shape[1:])

    def read(self, indices):
        """Rows `indices` as (float32 x, int32 y or None)."""
        x = self.x[indices]
        x = scale_uint8(x) if x.dtype == np.uint8 else x
        return x, None if self.y is None else self.y[indices]


def _is_image(name):
    return name.lower().endswith(IMAGE_EXTENSIONS) and not name.startswith(".")


def scan_folder(path):
    """(files, labels, class names) of an image folder: images directly in it (no labels), or
    one subfolder of images per class (labels = the subfolders' sorted order).

    Raises:
        DatasetError naming the problem: no such folder, no images, images beside class
        folders, a class folder without images.
    """
    if not os.path.isdir(path):
        raise DatasetError(f"folder:{path}: no such directory")
    entries = sorted(os.scandir(path), key=lambda e: e.name)
    files = [e.path for e in entries if e.is_file() and _is_image(e.name)]
    classes = [e for e in entries if e.is_dir() and not e.name.startswith(".")]
    if files and classes:
        raise DatasetError(f"folder:{path} holds both images and subfolders "
                           f"({classes[0].name}/): put every image in a class folder, or none")
    if files:
        return files, None, None
    out, labels = [], []
    for label, folder in enumerate(classes):
        images = sorted(e.path for e in os.scandir(folder.path)
                        if e.is_file() and _is_image(e.name))
        if not images:
            raise DatasetError(f"folder:{path}: class folder {folder.name}/ holds no PNG or "
                               "JPEG images")
        out += images
        labels += [label] * len(images)
    if not out:
        raise DatasetError(f"folder:{path} holds no PNG or JPEG images")
    return out, np.asarray(labels, np.int32), [c.name for c in classes]


def decode_image(path, image_size=None, mode=None):
    """One image file as uint8 [H, W, C]: resized so its shorter side is `image_size`, then
    centre-cropped to image_size x image_size (unchanged when None); converted to `mode`
    ("L" or "RGB"; None: "L" for greyscale files, else "RGB").

    Raises:
        DatasetError naming the file when it cannot be decoded.
    """
    from PIL import Image

    try:
        with Image.open(path) as image:
            image.load()
            mode = mode or ("L" if image.mode in ("1", "L", "I;16", "I") else "RGB")
            image = image.convert(mode)
    except (OSError, ValueError, SyntaxError) as e:
        raise DatasetError(f"corrupt or truncated image {path}: {e}") from None
    if image_size:
        w, h = image.size
        scale = image_size / min(w, h)
        size = (max(image_size, round(w * scale)), max(image_size, round(h * scale)))
        if size != (w, h):
            image = image.resize(size, Image.BICUBIC, reducing_gap=None)
        left, top = (size[0] - image_size) // 2, (size[1] - image_size) // 2
        image = image.crop((left, top, left + image_size, top + image_size))
    pixels = np.asarray(image, np.uint8)
    return pixels[..., None] if pixels.ndim == 2 else pixels


class FolderSource:
    """A folder of PNG/JPEG images (`scan_folder`'s layouts), decoded when read.

    The example shape and channels come from the first image (1 channel when it is
    greyscale, else 3); without `image_size` every image must have its size.

    Args:
        path: the folder.
        image_size: resize (shorter side) and centre-crop every image to this square; None
            keeps the files' size.
    """

    def __init__(self, path, image_size=None):
        if image_size is not None and (isinstance(image_size, bool) or int(image_size) < 1):
            raise DatasetError(f"image_size must be a positive int, got {image_size!r}")
        self.path = path
        self.image_size = None if image_size is None else int(image_size)
        self.files, self.y, self.class_names = scan_folder(path)
        first = decode_image(self.files[0], self.image_size)
        self.mode = "L" if first.shape[-1] == 1 else "RGB"
        self.example_shape = tuple(int(d) for d in first.shape)

    def __len__(self):
        return len(self.files)

    @property
    def num_classes(self):
        return None if self.class_names is None else len(self.class_names)

    def image(self, i):
        """uint8 [H, W, C] of file i, checked against the first image's shape."""
        pixels = decode_image(self.files[i], self.image_size, self.mode)
        if pixels.shape != self.example_shape:
            raise DatasetError(
                f"image {self.files[i]} is {pixels.shape[1]}x{pixels.shape[0]}, not "
                f"{self.example_shape[1]}x{self.example_shape[0]} like {self.files[0]}: pass "
                "--image_size to resize and crop every image to one size")
        return pixels

    def read(self, indices):
        x = np.stack([self.image(int(i)) for i in indices])
        return scale_uint8(x), None if self.y is None else self.y[np.asarray(indices)]


class TfdsSource:
    """A tfds dataset prepared in the ArrayRecord format, read by index (`tfds.data_source`).

    Args:
        name: the tfds name.
        split: its split.
        data_dir: tfds' data directory (None: tfds' default).

    Raises:
        DatasetError, one line: tensorflow-datasets missing, no such dataset or split, the data
        not prepared in data_dir, or prepared as TFRecord (which cannot be read by index:
        the message says how to prepare it for random access).
    """

    def __init__(self, name, split, data_dir=None):
        from keras_pd.tf_adapter import import_tensorflow

        try:
            tfds = import_tensorflow("tensorflow_datasets")  # after Keras: see tf_adapter
        except ImportError:
            raise DatasetError(f"tfds dataset {name!r} needs tensorflow-datasets: pip install "
                               "'keras-pd[datasets]'") from None
        shown = data_dir or os.environ.get("TFDS_DATA_DIR") or "~/tensorflow_datasets"
        try:
            self.source = tfds.data_source(name, split=split, data_dir=data_dir,
                                           download=False)
        except tfds.core.registered.DatasetNotFoundError as e:
            raise DatasetError(f"tfds has no dataset {name!r} in {shown!r} "
                               f"({_first_line(e)})") from None
        except NotImplementedError:  # not prepared, or prepared as TFRecord
            prepared = tfds.builder(name, data_dir=data_dir).is_prepared()
            raise DatasetError(
                (f"tfds dataset {name!r} is prepared as TFRecord in {shown!r}, which cannot be "
                 "read by index: prepare it for random access with" if prepared else
                 f"tfds dataset {name!r} is not in data_dir {shown!r}: pass --download, or "
                 "prepare it on a machine with network with")
                + f" `tfds build {name} --file_format=array_record --data_dir={shown}` "
                "(docs/training.md, 'Data')") from None
        except ValueError as e:
            raise DatasetError(f"tfds dataset {name!r}: {_first_line(e)}") from None
        except (AssertionError, FileNotFoundError, OSError) as e:
            raise DatasetError(
                f"tfds dataset {name!r} is not prepared in data_dir {shown!r}: prepare it on a "
                f"machine with network (`tfds build {name} --file_format=array_record`) and "
                f"copy data_dir here ({_first_line(e)})") from None
        if len(self.source) == 0:
            raise DatasetError(f"tfds dataset {name!r} split {split!r} is empty")
        features = self.source.dataset_info.features
        if "image" not in features:
            raise DatasetError(f"tfds dataset {name!r} has no 'image' feature; only image "
                               "datasets are supported")
        shape = tuple(features["image"].shape)
        if None in shape or len(shape) != 3:
            raise DatasetError(f"tfds dataset {name!r} has images of varying shape {shape}; "
                               "use a fixed-size variant (e.g. imagenet_resized/64x64)")
        self.example_shape = tuple(int(d) for d in shape)
        label = features["label"] if "label" in features else None
        self.label_key = "label" if hasattr(label, "num_classes") else None
        self.num_classes = int(label.num_classes) if self.label_key else None

    def __len__(self):
        return len(self.source)

    def read(self, indices):
        records = [self.source[int(i)] for i in indices]
        x = scale_uint8(np.stack([np.asarray(r["image"]) for r in records]))
        y = (None if self.label_key is None
             else np.asarray([r[self.label_key] for r in records], np.int32))
        return x, y


def _first_line(e):
    text = str(e).strip()
    return text.splitlines()[0] if text else type(e).__name__
