"""kws-edge training: synthetic data, augmentation, teacher training, distillation, metrics, reports."""
