"""Pool sources (bundled Animal-MNIST, ImageFolder, Parquet manifest) and the in-pipeline image transform."""
from raal.data.sources import Dataset, ImageSet, load_data
from raal.data.transforms import ImageTransform, decode_images

__all__ = ["Dataset", "ImageSet", "ImageTransform", "decode_images", "load_data"]
