"""poisonclip: poisoning and backdooring contrastive image-text models (Carlini & Terzis, ICLR 2022)."""

__version__ = "0.1.0"
