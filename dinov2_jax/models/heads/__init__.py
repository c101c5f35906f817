"""Task heads on the frozen backbone: ImageNet linear classifiers, segmentation and depth heads."""
