"""What the PyTorch sides of the benchmarks share: the image dataset and the training
transforms that match xray's augmentation in the benchmarks."""
from PIL import Image
from torch.utils.data import Dataset
from torchvision import transforms


class Files(Dataset):
    """(path, label) rows read as RGB and transformed."""

    def __init__(self, rows, transform):
        self.rows = rows
        self.transform = transform

    def __len__(self):
        return len(self.rows)

    def __getitem__(self, i):
        path, label = self.rows[i]
        with Image.open(path) as img:
            return self.transform(img.convert("RGB")), label


def train_transform():
    """RandomResizedCrop 224 (scale 0.8-1), flip, rotation 10, brightness/contrast 0.2,
    ImageNet normalisation."""
    return transforms.Compose([
        transforms.RandomResizedCrop(224, scale=(0.8, 1.0)),
        transforms.RandomHorizontalFlip(),
        transforms.RandomRotation(10),
        transforms.ColorJitter(brightness=0.2, contrast=0.2),
        transforms.ToTensor(),
        transforms.Normalize([0.485, 0.456, 0.406], [0.229, 0.224, 0.225]),
    ])
