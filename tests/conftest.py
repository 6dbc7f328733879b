import os
import sys

# Tests import `configs` and `data_prep` from the checkout root.
sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
