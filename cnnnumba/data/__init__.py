"""Data: in-memory datasets, the DataLoader, batch augmentations and readers for digits, MNIST and CIFAR-10."""
from .dataset import ArrayDataset
from .datasets import load_cifar10, load_digits, load_mnist
from .loader import DataLoader
from .sampler import DistributedSampler
from .transforms import Compose, Normalize, RandomCrop, RandomHorizontalFlip, Transform

__all__ = ["ArrayDataset", "Compose", "DataLoader", "DistributedSampler", "Normalize", "RandomCrop",
           "RandomHorizontalFlip", "Transform", "load_cifar10", "load_digits", "load_mnist"]
