"""A user's own images, a folder or a CSV, as a checked TFDS data set.

sources.py reads and checks the layout, splits.py makes or checks the
splits, images.py turns every supported file into uint8 RGB, builder.py
writes the data set and dataset.py decides when to (re)build it.
"""
