"""Self-supervised pretraining of a registry backbone: VICReg (Bardes, Ponce & LeCun 2022), in Keras 3.

Why VICReg: on a CPU the batch is small (32-128 images). Contrastive methods (SimCLR) need many negatives
per batch; BYOL keeps a second, momentum-updated network (twice the forward cost); SimSiam can collapse
without its careful predictor and batch norm. VICReg needs neither negatives nor a second network: it pulls
two views of an image together (invariance), keeps every embedding dimension's spread across the batch
above 1 (variance, which prevents collapse) and decorrelates the dimensions (covariance); it was shown to
work with batches of 128-256 and degrades gracefully below.

The encoder is the platform's own model up to its ``embedding`` layer (any backbone of the registry, with
its head's embedding layer), so the pretrained weights load into a classifier by layer name
(``model.init_from`` / ``model.weights``); a small projector (two dense layers) carries the loss and is
thrown away afterwards.
"""

from __future__ import annotations

from typing import Any

from models.head import EMBEDDING_LAYER

#: VICReg's weights: invariance, variance, covariance (the paper's defaults).
SIM_WEIGHT, STD_WEIGHT, COV_WEIGHT = 25.0, 25.0, 1.0


def vicreg_terms(z1: Any, z2: Any) -> tuple[Any, Any, Any]:
    """``(invariance, variance, covariance)`` of two batches of projections ``(B, D)`` (float32 tensors)."""
    import tensorflow as tf

    z1, z2 = tf.cast(z1, tf.float32), tf.cast(z2, tf.float32)
    invariance = tf.reduce_mean(tf.square(z1 - z2))
    n = tf.cast(tf.shape(z1)[0], tf.float32)
    d = tf.cast(tf.shape(z1)[1], tf.float32)

    def variance(z: Any) -> Any:
        std = tf.sqrt(tf.math.reduce_variance(z, axis=0) + 1e-4)
        return tf.reduce_mean(tf.nn.relu(1.0 - std))

    def covariance(z: Any) -> Any:
        z = z - tf.reduce_mean(z, axis=0)
        cov = tf.matmul(z, z, transpose_a=True) / tf.maximum(n - 1.0, 1.0)
        off = cov - tf.linalg.diag(tf.linalg.diag_part(cov))
        return tf.reduce_sum(tf.square(off)) / d

    return invariance, variance(z1) + variance(z2), covariance(z1) + covariance(z2)


def vicreg_loss(z1: Any, z2: Any) -> Any:
    """The weighted VICReg loss of two batches of projections."""
    sim, std, cov = vicreg_terms(z1, z2)
    return SIM_WEIGHT * sim + STD_WEIGHT * std + COV_WEIGHT * cov


def embedding_encoder(model: Any) -> Any:
    """The sub-model from ``model``'s input to its ``embedding`` layer (sharing the layers and weights)."""
    import keras

    return keras.Model(model.input, model.get_layer(EMBEDDING_LAYER).output, name=f"{model.name}_encoder")


def build_vicreg(model: Any, views: Any, *, projector_units: int = 256) -> Any:
    """A Keras model that trains ``model``'s encoder with VICReg on two ``views(images)`` of each batch.

    ``fit`` takes batches of float32 images ``(B, size, size, 3)`` (0..255, no labels) and reports ``loss``,
    ``invariance``, ``variance`` and ``covariance``. ``model`` itself (classifier included, untouched) holds
    the pretrained weights afterwards.
    """
    import keras
    import tensorflow as tf

    encoder = embedding_encoder(model)
    projector = keras.Sequential(
        [
            keras.layers.Dense(projector_units, name="proj_1"),
            keras.layers.BatchNormalization(name="proj_bn"),
            keras.layers.ReLU(),
            keras.layers.Dense(projector_units, name="proj_2", dtype="float32"),
        ],
        name="projector",
    )

    class VICReg(keras.Model):
        """Encoder + projector trained on two views; the losses as metrics."""

        def __init__(self) -> None:
            super().__init__(name="vicreg")
            self.encoder, self.projector = encoder, projector
            self.trackers = {k: keras.metrics.Mean(name=k) for k in ("loss", "invariance", "variance", "covariance")}

        def call(self, images: Any, training: bool = False) -> Any:
            return self.projector(self.encoder(images, training=training), training=training)

        @property
        def metrics(self) -> list[Any]:
            return list(self.trackers.values())

        def train_step(self, images: Any) -> dict[str, Any]:
            with tf.GradientTape() as tape:
                z1 = self(views(images), training=True)
                z2 = self(views(images), training=True)
                sim, std, cov = vicreg_terms(z1, z2)
                loss = SIM_WEIGHT * sim + STD_WEIGHT * std + COV_WEIGHT * cov
            grads = tape.gradient(loss, self.trainable_variables)
            self.optimizer.apply(grads, self.trainable_variables)
            for name, value in (("loss", loss), ("invariance", sim), ("variance", std), ("covariance", cov)):
                self.trackers[name].update_state(value)
            return {k: t.result() for k, t in self.trackers.items()}

    vicreg = VICReg()
    size = model.input.shape[1]
    vicreg(tf.zeros((2, size, size, 3)))  # build the projector
    return vicreg
