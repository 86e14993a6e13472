"""Stochastic bilevel methods over minibatches of ``sampled`` rows.

* :mod:`bil.runtime.stochastic.rows`: the minibatch objectives the compiler lowers;
* :mod:`bil.runtime.stochastic.oracles`: :class:`StochasticOracles`, the minibatch oracles
  (gradients, Hessian-vector and cross products on a batch of row indices), row counts for
  the cost axis and the seeded sampler.
"""
