"""Datasets and data modules that install offline (embedded MNIST, sample photos, image folders)."""
