"""timm's augmentation policy strings (hyperparameter ``auto_augment``), checked at parse time.

timm reads ``rand-m9-mstd0.5-inc1`` (RandAugment), ``augmix-m5-w4-d2`` (AugMix) and ``original-mstd0.5``
(AutoAugment) section by section and passes over a section it cannot read, so a typo trains with a policy the
user did not ask for. This grammar accepts exactly the sections timm uses (tests check both agree).
"""

from __future__ import annotations

import re

from soupflow.plan.errors import ConfigError

INT, FLOAT, FLAG = r"\d+", r"\d+(?:\.\d*)?", r"[01]"
#: policy family -> its sections, each a key and the number it takes
SECTIONS: dict[str, dict[str, str]] = {
    "rand": {"m": INT, "n": INT, "mstd": FLOAT, "mmax": INT, "inc": FLAG, "p": FLOAT, "t": r"(?:weights|3aw|3a)"},
    "augmix": {"m": INT, "w": INT, "d": INT, "a": FLOAT, "b": FLAG, "mstd": FLOAT},
    **{policy: {"mstd": FLOAT} for policy in ("original", "originalr", "v0", "v0r", "3a")},
}
ALLOWED = ("rand-m9-mstd0.5-inc1 (RandAugment: m, n, mstd, mmax, inc, p, t), augmix-m5-w4-d2 (AugMix: m, w, d, a, b, "
           "mstd), or an AutoAugment policy: original, originalr, v0, v0r, 3a (with -mstd<number>)")


def check_auto_augment(key: str, value: str) -> None:
    """Raise a ConfigError naming ``key`` unless ``value`` is a policy string timm reads in full."""
    family, *sections = value.split("-")
    grammar = SECTIONS.get(family)
    for section in sections if grammar is not None else ():
        if not any(re.fullmatch(f"{name}{number}", section) for name, number in grammar.items()):
            grammar = None
    if grammar is None:
        raise ConfigError(f"config key '{key}' is {value!r}, which timm does not read in full; allowed: {ALLOWED}")
