"""Albumentations policies, class-targeted oversampling and test-time augmentation."""

import os

# albumentations pings the internet for updates on import unless this is set; set it before any import.
os.environ.setdefault("NO_ALBUMENTATIONS_UPDATE", "1")
