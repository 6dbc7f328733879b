"""The method: DANIL's loss and what makes its double backprop cheap.

losses (Base, OHEM and DANIL, Eqs. 2-6, both batch readings of Algorithm 1),
ops (conv and max-pool whose input gradients have cheap derivatives),
weight_grads (conv weight gradients as matrix products, used by ops),
misclassified_only (the opt-in step that runs the input VJP over the
misclassified images only), intrinsic_maps (A+ and A-, Fig. 3).

May import: JAX, optax and numpy only; nothing else of danil_jax. It is the
bottom layer: the pure functions a JAX engineer takes into their own code.
"""
