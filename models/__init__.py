"""Reference architectures that examples and benchmarks wrap, installed as ``uncertlr_models``.

* :class:`MLP` — fully connected, any input shape (flattened);
* :class:`ImageCNN` — a small CNN for 8x8 digits and 28x28 MNIST-format images;
* :class:`SpeechCNN`, :class:`SpeechCRNN` — a small CNN and a CNN + GRU for log-mel / MFCC
  speech features ``[B, bands, frames]``;
* :class:`ResNet18` — ResNet-18 for 32x32 (or ImageNet-size) images, batch norm by default;
* :class:`TransformerClassifier` — a small pre-norm Transformer encoder over token ids;
* :class:`TinyTextTransformer` — a Transformer text classifier with Hugging Face's calling
  convention (``forward(input_ids, attention_mask)`` returning an output with ``.logits``);
* :class:`MaxPool2x2` — ``nn.MaxPool2d(2)``, faster on a CPU, same values and gradients (the CNNs above pool with it).

Except ResNet18 with ``norm="batch"``, none uses batch norm, so every weight can be made
Bayesian with :func:`uncertlr.torch.bayesian` and evaluated for many posterior samples at once.

Example:
    >>> from uncertlr_models import MLP
    >>> net = MLP(64, (128, 128), 10)
"""

from uncertlr_models._pool import MaxPool2x2
from uncertlr_models.cnn import ImageCNN
from uncertlr_models.mlp import MLP
from uncertlr_models.resnet import ResNet18
from uncertlr_models.speech import SpeechCNN, SpeechCRNN
from uncertlr_models.text import ClassifierOutput, TinyTextTransformer
from uncertlr_models.transformer import TransformerClassifier

__all__ = [
    "MLP",
    "ClassifierOutput",
    "ImageCNN",
    "MaxPool2x2",
    "ResNet18",
    "SpeechCNN",
    "SpeechCRNN",
    "TinyTextTransformer",
    "TransformerClassifier",
]
