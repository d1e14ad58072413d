"""Versions of the code whose changes change results on purpose.

Snakemake's "code" rerun trigger is off (profiles/default): editing a script, a rule or a comment never
retrains finished runs. A deliberate change to what training computes (a new default, a fixed bug in the
loop, another numeric path) bumps ``TRAINING`` here: it is a param of the init and fine-tune rules, so the
next run retrains what it affects, and says why ("params changed").
"""

#: bump when the init or fine-tune jobs' results change on purpose
TRAINING = 1

#: bump when what a soup job computes changes on purpose: soups kept by earlier jobs are cooked again
SOUPS = 3  # 2: greedy serves the state val scored last (was its drifted running sum); 3: the pre-check scores
# averaged and re-estimated BatchNorm statistics (new soups-table columns; a bn: recompute soup's
# precheck_midpoint_val_accuracy is now the averaged midpoint's)
