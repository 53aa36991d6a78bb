"""One reconciler per kind: read the world, act, report status. No kopf import; the
operator layer calls these from its handlers and turns their `Outcome` into kopf's
language.

For now only the generic part exists (`generic.reconcile`: owner Cluster, pause,
`Paused` condition, observedGeneration); the providers' own steps arrive with their
issues.
"""
