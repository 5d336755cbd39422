"""k-fold cross-validation: which samples of the training pool validate in fold ``cv.fold`` (``cv=kfold``).

Data sets call ``KFold.split`` where they would otherwise hold out ``val_fraction`` of the training pool
(everything not in the test split), so the test split is the same in every fold. The folds are scikit-learn's:
stratified by class where the targets are classes, shuffled with the run's seed. Fold k validates on the
k-th part and trains on the others, so over the ``folds`` jobs of a sweep every sample of the pool validates
exactly once.
"""

from __future__ import annotations

import torch

from trainlab.errors import ConfigError, DataError


class KFold:
    """Fold ``fold`` (0-based) of ``folds``. (A plain class: ``instantiate`` would turn a dataclass handed to
    the data set's constructor into a config.)"""

    def __init__(self, folds: int, fold: int):
        self.folds, self.fold = folds, fold
        if isinstance(self.folds, bool) or not isinstance(self.folds, int) or self.folds < 2:
            raise ConfigError(f"cv.folds must be an integer of at least 2, got {self.folds}; e.g. cv.folds=5")
        if isinstance(self.fold, bool) or not isinstance(self.fold, int) or not 0 <= self.fold < self.folds:
            raise ConfigError(
                f"cv.fold must be one of 0 ... {self.folds - 1} (cv.folds={self.folds}), got {self.fold}"
            )

    def split(self, index: torch.Tensor, targets: torch.Tensor, seed: int) -> tuple[torch.Tensor, torch.Tensor]:
        """(training, validation) sample indices of this fold: ``index`` is the pool, ``targets`` its targets
        (integers: classes, and the folds are stratified; floats: values)."""
        from sklearn.model_selection import KFold as PlainFolds
        from sklearn.model_selection import StratifiedKFold

        splitter = StratifiedKFold if not targets.is_floating_point() else PlainFolds
        try:
            folds = list(splitter(self.folds, shuffle=True, random_state=seed % 2**32).split(index, targets))
        except ValueError as error:  # fewer samples (of a class, where stratified) than folds
            raise DataError(
                f"cv.folds={self.folds} does not fit this data set: {error}; use fewer folds"
            ) from None
        train, val = folds[self.fold]
        return index[torch.from_numpy(train)], index[torch.from_numpy(val)]
