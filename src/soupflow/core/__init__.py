"""The computations: models and checkpoints, training and resuming, evaluation, averaging and the soup
recipes, BatchNorm re-estimation, paired statistics, the "Too Salty" analysis. Imports ``store``, ``plan``."""
