"""The user's inputs in their native forms: datasets (Cityscapes, BDD100K, GTA5, plain folders) and models (checkpoints, torchvision constructors, factories).

May import: seeds, io.
"""
