from edgevit.data.preprocess import Preprocess, imagenet_preprocess

__all__ = ["Preprocess", "imagenet_preprocess"]
