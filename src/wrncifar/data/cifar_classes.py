"""The class names of the CIFAR releases, in label order: CIFAR-10's 10, CIFAR-100's 100 fine classes.

The lists the datasets' own metadata hold (the official releases' `batches.meta` / `meta` pickles, the array
export's `meta.json`): a checkpoint trained on CIFAR names its predictions with them on a machine without the data.
"""

from __future__ import annotations

CIFAR10_CLASSES = ("airplane", "automobile", "bird", "cat", "deer", "dog", "frog", "horse", "ship", "truck")
CIFAR100_CLASSES: tuple[str, ...] = tuple(
    """
    apple aquarium_fish baby bear beaver bed bee beetle bicycle bottle bowl boy bridge bus butterfly camel can
    castle caterpillar cattle chair chimpanzee clock cloud cockroach couch crab crocodile cup dinosaur dolphin
    elephant flatfish forest fox girl hamster house kangaroo keyboard lamp lawn_mower leopard lion lizard
    lobster man maple_tree motorcycle mountain mouse mushroom oak_tree orange orchid otter palm_tree pear
    pickup_truck pine_tree plain plate poppy porcupine possum rabbit raccoon ray road rocket rose sea seal shark
    shrew skunk skyscraper snail snake spider squirrel streetcar sunflower sweet_pepper table tank telephone
    television tiger tractor train trout tulip turtle wardrobe whale willow_tree wolf woman worm
    """.split()  # noqa: SIM905 - a hundred words read better than a hundred quoted strings
)

# By `CIFARRelease.slug` (`data/cifar_releases.py`).
CLASSES_BY_RELEASE: dict[str, tuple[str, ...]] = {"cifar10": CIFAR10_CLASSES, "cifar100": CIFAR100_CLASSES}
