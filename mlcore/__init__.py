"""Pleura's network and its weights: plain Python (tensors, arrays, dataclasses).

The plain modules (network, engine, gradcam, preprocessing, calibration, metrics,
evaluation, data, training, card, plots) never import Django, a tenant or HTTP
(tests/mlcore/test_plain_python.py). The Django side that wraps them is `models`,
`registry`, `admin`, `apps`, `tasks`, `promotion`, the second half of `retraining` and
the management commands: they record what they do in the audit trail (`hospital.audit`,
the one trail every app writes to), and the learning loop's commands reach reviewed
studies through `diagnostics.feedback`, which applies each hospital's consent. None of
them scopes a query by hospital.
"""
