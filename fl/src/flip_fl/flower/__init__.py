"""FLIP jobs on Flower: the immutable app template, job bundles, and the processes of a Flower net.

- :mod:`~flip_fl.flower.bundle` builds a job bundle (researcher files + template) and its sha256.
- :mod:`~flip_fl.flower.net` starts and stops SuperLink / SuperNode processes and drives the ``flwr`` CLI.
- :mod:`~flip_fl.flower.serverapp` and :mod:`~flip_fl.flower.clientapp` are what the template's
  ServerApp and ClientApp run; :mod:`~flip_fl.flower.events` is what the server reports.
- :mod:`~flip_fl.flower.supernode` and :mod:`~flip_fl.flower.executor` are how a trust runs its SuperNode:
  polling sooner, and forking each ClientApp from a process that imported torch and flwr once.
- :mod:`~flip_fl.flower.pki` makes a throwaway CA, TLS certificate and node keys for local nets.
"""
